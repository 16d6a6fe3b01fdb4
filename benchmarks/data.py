"""Corpora bigger than memory (issue 23), by hand, not in CI.

Generates JSONL corpora of English-like documents (words from the `english-words` list
drawn with Zipf frequencies, sentences, paragraphs, ~1% exact duplicates), then for each
size runs, in its own process with the prepared-data cache emptied and the page cache
dropped where the OS allows:

    speedrun train shakespeare-bpe --data CORPUS train.steps=20 train.time_budget=0

and records its stopwatch, peak resident memory (the process's own ru_maxrss), setup,
evaluation and training seconds, and the tokens each evaluation scored. On the largest
corpus it then runs the same command again on the prepared dataset (time to the first
step), and times the two tokenizer libraries' own batch encoders on the same text with the
prepared tokenizer, beside preparation's own rate (reading, splitting, deduplicating,
encoding and writing shards). The record goes to results/data.json.

    python -m benchmarks data [--sizes-mb 100 5000] [--workdir /tmp/speedrun-data-bench]
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (DATA_EVAL_FRACTION, DATA_FIRST_STEP_SECONDS, DATA_PEAK_GROWTH, DATA_PEAK_RSS_BYTES,
                               DATA_PREPARATION_VS_ENCODE_BATCH, parser, print_machine, write_record)
from benchmarks.timing import drop_page_cache, measured
from speedrun.rundir import RunDir

COMMAND = ["train", "shakespeare-bpe", "train.steps=20", "train.time_budget=0"]


# --- corpora -------------------------------------------------------------------
def generate(path: Path, megabytes: int, seed: int = 0) -> dict:
    """A JSONL corpus of about `megabytes` MB, the same bytes for the same size and seed."""
    from english_words import get_english_words_set

    if path.exists() and path.with_suffix(".done").exists():
        return json.loads(path.with_suffix(".done").read_text())
    rng = np.random.default_rng([seed, megabytes])
    words = np.array(sorted(get_english_words_set(["web2"], lower=True)), dtype=object)
    rng.shuffle(words)
    weights = 1.0 / (np.arange(len(words)) + 10.0)  # Zipf: the k-th commonest word's share ~ 1/k
    weights /= weights.sum()
    target, written, documents, duplicates = megabytes * 1_000_000, 0, 0, 0
    recent: list[str] = []
    tmp = path.with_suffix(".part")
    t0 = time.perf_counter()
    with tmp.open("w") as f:
        while written < target:
            lengths = np.clip(rng.lognormal(5.3, 0.8, 2000).astype(int), 20, 4000)  # words per document
            ids = rng.choice(len(words), int(lengths.sum()), p=weights)
            chunk, at = [], 0
            for n in lengths:
                w = words[ids[at:at + n]].tolist()
                at += n
                for k in range(0, n, 14):  # sentences of 14 words, paragraphs of 5 sentences
                    w[k] = w[k].capitalize()
                    if k:
                        w[k - 1] += ".\n\n" if k % 70 == 0 else "."
                text = " ".join(w) + "."
                if recent and rng.random() < 0.01:  # an exact copy of a recent document
                    text, duplicates = recent[int(rng.integers(len(recent)))], duplicates + 1
                recent = (recent + [text])[-100:]
                line = json.dumps({"text": text}) + "\n"
                chunk.append(line)
                written += len(line)
                documents += 1
            f.write("".join(chunk))
    tmp.rename(path)
    info = {"bytes": path.stat().st_size, "documents": documents, "duplicates": duplicates,
            "generate_seconds": round(time.perf_counter() - t0, 1)}
    path.with_suffix(".done").write_text(json.dumps(info))
    return info


# --- one training command, measured -----------------------------------------------
def run_train(corpus: Path, workdir: Path, name: str, fresh: bool) -> dict:
    cache = workdir / "cache"
    env = {**os.environ, "SPEEDRUN_CACHE": str(cache)}
    if fresh:
        subprocess.run(["rm", "-rf", str(cache / "prepared")], check=True)
    cold = drop_page_cache()
    out = workdir / "runs" / name
    subprocess.run(["rm", "-rf", str(out)], check=True)
    r = measured([*COMMAND, "--data", str(corpus), "--out", str(out), "--quiet"], env, workdir / f"{name}.log")
    summary = RunDir(out).read_summary()
    folder = next((cache / "prepared").glob(f"{corpus.name}-*"))
    manifest = json.loads((folder / "manifest.json").read_text())
    m = summary["metrics"]
    return {
        "run": name, "corpus_bytes": corpus.stat().st_size, "page_cache_dropped": cold,
        "prepared_before": not fresh,
        "stopwatch_seconds": round(r["stopwatch"], 2), "wall_seconds": round(summary["wall_seconds"], 2),
        "peak_rss_bytes": r["peak_rss_bytes"],
        "setup_seconds": round(summary["setup_seconds"], 2), "eval_seconds": round(summary["eval_seconds"], 2),
        "train_seconds": round(summary["train_seconds"], 2),
        "eval_fraction": round(summary["eval_seconds"] / r["stopwatch"], 4),
        "val_tokens": m.get("val_tokens"), "test_tokens": m.get("test_tokens"),
        "val_loss": m.get("val_loss"), "test_loss": m.get("test_loss"),
        "prepared": {k: manifest.get(k) for k in ("documents_read", "duplicates_dropped", "encoder",
                                                   "encode_seconds")}
        | {split: {k: v for k, v in info.items() if k != "shards"} | {"shards": len(info["shards"])}
           for split, info in manifest["splits"].items()},
        "prepared_folder": str(folder),
    }


# --- the libraries' own encoders ---------------------------------------------------
def encoder_rates(corpus: Path, folder: Path, megabytes: int = 200) -> dict:
    """MB/s of tokenizers' encode_batch and tiktoken's encode_ordinary_batch on the first
    `megabytes` of the corpus, held in memory, with the prepared dataset's tokenizer."""
    from speedrun.data.encode import _tiktoken_encoding
    from speedrun.tokenizer import load_tokenizer

    tok = load_tokenizer((folder / "tokenizer.json").read_text())
    texts, size = [], 0
    with corpus.open() as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            size += len(texts[-1].encode())
            if size >= megabytes * 1_000_000:
                break
    batches = [texts[i:i + 2000] for i in range(0, len(texts), 2000)]
    rates = {}
    t0 = time.perf_counter()
    for b in batches:
        tok._plain.encode_batch(b, add_special_tokens=False)
    rates["tokenizers_encode_batch_mb_s"] = size / 1e6 / (time.perf_counter() - t0)
    enc = _tiktoken_encoding(tok)
    t0 = time.perf_counter()
    for b in batches:
        enc.encode_ordinary_batch(b)
    rates["tiktoken_encode_ordinary_batch_mb_s"] = size / 1e6 / (time.perf_counter() - t0)
    rates["sample_bytes"] = size
    return rates


def main() -> None:
    p = parser(__doc__, "data")
    p.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 5000])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/speedrun-data-bench"))
    a = p.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    print_machine()
    record = {"measured_command": "speedrun " + " ".join(COMMAND) + " --data CORPUS", "corpora": {}, "runs": []}
    sizes = sorted(a.sizes_mb)
    for mb in sizes:
        corpus = a.workdir / f"corpus-{mb}mb.jsonl"
        info = generate(corpus, mb)
        record["corpora"][corpus.name] = info
        print(f"corpus {corpus.name}: {info['bytes'] / 1e6:,.0f} MB, {info['documents']:,} documents", flush=True)
        run = run_train(corpus, a.workdir, f"{mb}mb-cold", fresh=True)
        record["runs"].append(run)
        print(json.dumps({k: v for k, v in run.items() if k != "prepared"}), flush=True)
    largest = a.workdir / f"corpus-{sizes[-1]}mb.jsonl"
    again = run_train(largest, a.workdir, f"{sizes[-1]}mb-prepared", fresh=False)
    record["runs"].append(again)
    print(json.dumps({k: v for k, v in again.items() if k != "prepared"}), flush=True)
    cold = record["runs"][len(sizes) - 1]
    rates = encoder_rates(largest, Path(cold["prepared_folder"]))
    train = cold["prepared"]
    prepared_bytes = sum(train[s]["bytes"] for s in ("train", "val", "test") if s in train)
    rates["preparation_mb_s"] = cold["corpus_bytes"] / 1e6 / train["encode_seconds"]
    rates["preparation_distinct_text_mb_s"] = prepared_bytes / 1e6 / train["encode_seconds"]
    record["encoders"] = rates
    small, big = record["runs"][0], cold
    record["targets"] = {
        "peak_rss_at_largest_bytes": [big["peak_rss_bytes"], DATA_PEAK_RSS_BYTES],
        "peak_growth": [big["peak_rss_bytes"] / small["peak_rss_bytes"]
                        if big["peak_rss_bytes"] and small["peak_rss_bytes"] else None, DATA_PEAK_GROWTH],
        # text against text: preparation's rate counts the distinct documents' UTF-8 bytes it
        # encoded (not the JSON around them), as the libraries' rates count their documents'
        "preparation_vs_tokenizers_encode_batch": [
            rates["preparation_distinct_text_mb_s"] / rates["tokenizers_encode_batch_mb_s"],
            DATA_PREPARATION_VS_ENCODE_BATCH],
        "preparation_vs_tiktoken_encode_ordinary_batch": [
            rates["preparation_distinct_text_mb_s"] / rates["tiktoken_encode_ordinary_batch_mb_s"], None],
        "second_run_first_step_seconds": [again["setup_seconds"], DATA_FIRST_STEP_SECONDS],
        "eval_fraction_at_largest": [big["eval_fraction"], DATA_EVAL_FRACTION],
    }
    print("\ntarget                                        measured      target")
    for name, (value, target) in record["targets"].items():
        shown = "-" if value is None else f"{value:,.3f}" if value < 1e6 else f"{value / 1e9:,.2f} GB"
        goal = "" if target is None else f"{target:,.3f}" if target < 1e6 else f"{target / 1e9:,.2f} GB"
        print(f"{name:<45} {shown:>12}  {goal:>10}")
    write_record("data", record, caches="cold", out=a.out,
                 caches_note="each size's prepared dataset emptied and the page cache dropped where the OS allows "
                             "(page_cache_dropped); the last run is the largest again on its prepared dataset")


if __name__ == "__main__":
    main()
