"""speedrun.data.shards and speedrun.data.preparation: the shard format, preparation that streams,
resumes and is found again, bounded memory, and the one-line error for each fault."""

import errno
import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_data_sources import error

from speedrun.config import TextData
from speedrun.data import DataError, prepare
from speedrun.data import preparation as prepare_module
from speedrun.data.preparation import Preparation
from speedrun.data.shards import HEADER, ShardWriter, TokenSplit, read_header, read_shard
from speedrun.tokenizer import EOT


def write_jsonl(path: Path, docs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def documents(n: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "naïve", "the", "of"]
    return [f"{i}: " + " ".join(rnd.choice(words) for _ in range(rnd.randint(5, 30))) for i in range(n)]


def data(source, tmp_path, **kw) -> TextData:
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return TextData(source=str(source), **kw)


def split_docs(ds, name: str) -> list[str]:
    """The documents of a prepared split, decoded back from its ids."""
    split = ds.split(name)
    if split is None:
        return []
    text = ds.tokenizer.decode(np.asarray(split).tolist())
    return [d for d in text.split(EOT) if d]


def shard_bytes(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.bin"))}


# ---------------------------------------------------------------- the shard format

@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_shard_round_trip_and_header(tmp_path, dtype):
    ids = np.arange(0, 1000, 3).astype(dtype) * (70 if dtype == np.uint32 else 1)
    w = ShardWriter(tmp_path / "train-00000.bin", dtype)
    w.write(ids[:100], documents=2)
    w.write(ids[100:], documents=1)
    assert not (tmp_path / "train-00000.bin").exists()  # only a .part until it is whole
    entry = w.close()
    assert entry == {"file": "train-00000.bin", "tokens": len(ids), "documents": 3}
    path = tmp_path / "train-00000.bin"
    assert path.stat().st_size == HEADER.size + len(ids) * np.dtype(dtype).itemsize
    assert read_header(path) == (np.dtype(dtype).itemsize, len(ids), 3)
    back = read_shard(path, dtype, len(ids))
    assert back.dtype == dtype and np.array_equal(back, ids)
    # readable by any tool with the documented layout
    assert np.array_equal(np.fromfile(path, dtype=np.dtype(dtype).newbyteorder("<"), offset=32), ids)


def test_shards_are_read_without_mapping_them_into_memory(tmp_path):
    """A memory-mapped shard puts a large folio of file pages in the process's resident
    memory for every random window touched (0.6 GB in 20 steps on a 1 GB corpus): the
    loader reads by position instead, so no shard appears among the process's mappings."""
    path = tmp_path / "train-00000.bin"
    w = ShardWriter(path, np.uint16)
    w.write(np.arange(50_000) % 60_000)
    w.close()
    split = TokenSplit([read_shard(path, np.uint16)])
    rows = split.rows(np.array([0, 777, 49_000]), 100)
    assert np.array_equal(rows[1], np.arange(777, 877)) and rows.dtype == np.int64
    assert np.array_equal(np.asarray(split.head(10)), np.arange(10))
    assert str(path) not in Path("/proc/self/maps").read_text()


def test_shard_header_checks(tmp_path):
    path = tmp_path / "train-00000.bin"
    w = ShardWriter(path, np.uint16)
    w.write(np.arange(100))
    w.close()
    good = path.read_bytes()
    path.write_bytes(good[:-10])
    error(r"truncated or padded: 222 bytes where its header says 232", read_shard, path, np.uint16)
    path.write_bytes(good[:20])
    error("truncated", read_shard, path, np.uint16)
    path.write_bytes(b"GARBAGE!" + good[8:])
    error("not a speedrun token shard", read_shard, path, np.uint16)
    path.write_bytes(good[:8] + (9).to_bytes(4, "little") + good[12:])
    error("format version 9", read_shard, path, np.uint16)
    path.write_bytes(good)
    error("does not match its manifest", read_shard, path, np.uint32)
    error("does not match its manifest", read_shard, path, np.uint16, 99)
    path.unlink()
    error("is missing", read_shard, path, np.uint16)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=6), st.data())
def test_token_split_reads_shards_as_one_array(sizes, draw):
    rng = np.random.default_rng(sum(sizes))
    shards = [rng.integers(0, 1000, n).astype(np.uint16) for n in sizes]
    whole = np.concatenate(shards)
    split = TokenSplit(shards)
    assert len(split) == len(whole) and np.array_equal(np.asarray(split), whole)
    if len(whole) < 2:
        return
    length = draw.draw(st.integers(1, len(whole)))
    starts = np.array(draw.draw(st.lists(st.integers(0, len(whole) - length), min_size=1, max_size=5)))
    assert np.array_equal(split.rows(starts, length), whole[starts[:, None] + np.arange(length)])
    n = draw.draw(st.integers(0, len(whole) + 3))
    assert np.array_equal(np.asarray(split.head(n)), whole[:n] if n else whole)
    a, b = sorted(draw.draw(st.tuples(st.integers(0, len(whole)), st.integers(0, len(whole)))))
    assert np.array_equal(split[a:b], whole[a:b]) and split[-1] == whole[-1]


# ---------------------------------------------------------------- preparation

def test_prepare_writes_shards_manifest_and_every_document_once(tmp_path):
    docs = documents(600)
    src = write_jsonl(tmp_path / "c.jsonl", docs + docs[:50])  # 50 copies
    ds = prepare(data(src, tmp_path, val_fraction=0.1, test_fraction=0.1, shard_tokens=4000), progress=False)
    m = ds.manifest
    assert m["documents_read"] == 650 and m["duplicates_dropped"] == 50
    assert len(m["splits"]["train"]["shards"]) > 3  # several shards, each closed at the shard size
    parts = [split_docs(ds, name) for name in ("train", "val", "test")]
    assert sorted(sum(parts, [])) == sorted(docs)
    assert all(60 - 25 < len(p) < 60 + 25 for p in parts[1:])
    assert not (ds.folder / "progress.json").exists() and not list(ds.folder.glob("*.part"))
    # the held-out splits open with an end-of-document token, context for their first token
    assert ds.split("val")[0] == ds.tokenizer.eot_id and ds.split("train")[0] != ds.tokenizer.eot_id
    assert ds.split("train").dtype == np.uint16 and m["vocab_size"] == ds.tokenizer.vocab_size


@settings(max_examples=12, deadline=None)
@given(st.lists(st.text(alphabet="abcdé \n", min_size=1, max_size=12).filter(lambda t: t.strip()),
                min_size=2, max_size=25, unique=True), st.integers(1, 4), st.randoms())
def test_split_is_stable_under_reordering_and_sharding(tmp_path_factory, docs, n_files, rnd):
    tmp = tmp_path_factory.mktemp("split")
    shuffled = docs[:]
    rnd.shuffle(shuffled)
    for k in range(n_files):
        write_jsonl(tmp / "many" / f"part-{k}.jsonl", shuffled[k::n_files])
    try:
        one = prepare(data(write_jsonl(tmp / "one" / "c.jsonl", docs), tmp, val_fraction=0.3), progress=False)
    except DataError as e:  # every document fell on one side: so they must in the sharded copy too
        error("fell in", prepare, data(tmp / "many", tmp, val_fraction=0.3, shard_tokens=8), progress=False)
        assert "fell in" in str(e)
        return
    many = prepare(data(tmp / "many", tmp, val_fraction=0.3, shard_tokens=8), progress=False)
    for name in ("train", "val"):
        assert sorted(split_docs(one, name)) == sorted(split_docs(many, name))


def test_duplicates_are_dropped_across_shards_and_files(tmp_path):
    docs = documents(300)
    write_jsonl(tmp_path / "src" / "a.jsonl", docs)
    write_jsonl(tmp_path / "src" / "b.jsonl", docs[::-1] + docs[:10])
    ds = prepare(data(tmp_path / "src", tmp_path, shard_tokens=500), progress=False)
    assert ds.manifest["duplicates_dropped"] == 310
    kept = split_docs(ds, "train") + split_docs(ds, "val")
    assert sorted(kept) == sorted(docs)


class Killed(Exception):
    pass


def test_killed_preparation_resumes_with_identical_shards(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "c.jsonl", documents(1500) + documents(40))
    cfg = data(src, tmp_path, tokenizer="bpe", vocab_size=300, test_fraction=0.05, shard_tokens=3000)
    clean = prepare(replace(cfg, cache_dir=str(tmp_path / "clean")), progress=False)

    calls = {"n": 0}
    real_append = Preparation.append

    def dies(self, *args):
        calls["n"] += 1
        if calls["n"] == 40:
            raise Killed
        real_append(self, *args)

    monkeypatch.setattr(Preparation, "append", dies)
    with pytest.raises(Killed):
        prepare(cfg, progress=False)
    folder = next((tmp_path / "cache" / "prepared").iterdir())
    state = json.loads((folder / "progress.json").read_text())
    assert 0 < state["documents_read"] < 1540 and list(folder.glob("*.part"))  # a shard was being written

    monkeypatch.setattr(Preparation, "append", real_append)
    encoded = []
    real_next = Preparation.next_batch
    monkeypatch.setattr(Preparation, "next_batch", staticmethod(
        lambda docs, limit: encoded.extend(b := real_next(docs, limit)) or b))
    resumed = prepare(cfg, progress=False)
    assert len(encoded) == 1540 - state["documents_read"]  # resumed after its last whole shards
    assert shard_bytes(resumed.folder) == shard_bytes(clean.folder)
    strip = lambda m: {k: v for k, v in m.items() if k not in ("encode_seconds",)}
    assert strip(resumed.manifest) == strip(clean.manifest) | {"key": resumed.manifest["key"]}


def test_a_second_run_finds_the_prepared_dataset_by_fingerprint(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "c.jsonl", documents(200))
    cfg = data(src, tmp_path, tokenizer="bpe", vocab_size=300)
    first = prepare(cfg, progress=False)

    def boom(*args, **kwargs):
        raise AssertionError("a prepared dataset was prepared again")

    monkeypatch.setattr(prepare_module, "Preparation", boom)
    again = prepare(cfg, progress=False)
    assert again.folder == first.folder
    assert prepare(replace(cfg, source=str(first.folder)), progress=False).folder == first.folder  # --data DIR
    monkeypatch.undo()
    # the same size, another byte: a new fingerprint, a new preparation
    text = src.read_text()
    src.write_text(text.replace("0: ", "0; ", 1))
    assert prepare(cfg, progress=False).folder != first.folder
    assert prepare(replace(cfg, vocab_size=290), progress=False).folder != first.folder


def test_evaluation_scores_the_same_first_tokens_every_time(tmp_path):
    from speedrun.device import setup_runtime
    from speedrun.tasks.text import TextTask
    from test_text import Uniform

    src = write_jsonl(tmp_path / "c.jsonl", documents(800))
    cfg = data(src, tmp_path, eval_tokens=500, test_fraction=0.1, shard_tokens=2000)
    task = TextTask(cfg, block_size=16, seed=0)
    full_val = task.dataset.split("val")
    assert len(full_val) > 2000 and len(task.val_tokens) == 501 and len(task.test_tokens) == 501
    assert np.array_equal(np.asarray(task.val_tokens), np.asarray(full_val)[:501])
    rt = setup_runtime("cpu", "float32")
    model = Uniform(task.tokenizer.vocab_size)
    a, b = task.full_eval(model, rt), TextTask(cfg, block_size=16, seed=5).full_eval(model, rt)
    assert a == b and a["val_tokens"] == 500
    assert task.full_eval(model, rt, "test")["test_tokens"] == 500
    whole = TextTask(replace(cfg, eval_tokens=0), block_size=16, seed=0)
    assert whole.full_eval(model, rt)["val_tokens"] == len(full_val) - 1


MEASURE = """
import json, resource, sys
sys.path.insert(0, {tests!r})
from speedrun.config import TextData
from speedrun.data import DataError, prepare
cfg = TextData(source=sys.argv[1], cache_dir=sys.argv[2], tokenizer="bpe", vocab_size=512,
               tokenizer_chars=1_000_000, shard_tokens=1 << 20)
ds = prepare(cfg, progress=False)
print(json.dumps({{"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "tokens": ds.manifest["splits"]["train"]["tokens"]}}))
"""


def test_preparation_memory_does_not_grow_with_the_corpus(tmp_path):
    """Preparing 40 MB peaks within 30 MB of preparing 4 MB; holding the text would add 40 MB and more."""
    peaks = {}
    for megabytes in (4, 40):
        path = tmp_path / f"c{megabytes}.jsonl"
        rnd = random.Random(megabytes)
        words = [f"w{i}" for i in range(3000)]
        with path.open("w") as f:
            i = 0
            while f.tell() < megabytes * 1_000_000:
                f.write(json.dumps({"text": f"{i} " + " ".join(rnd.choices(words, k=200))}) + "\n")
                i += 1
        out = subprocess.run([sys.executable, "-c", MEASURE.format(tests=str(Path(__file__).parent)), str(path),
                              str(tmp_path / f"cache{megabytes}")], capture_output=True, text=True, check=True)
        peaks[megabytes] = json.loads(out.stdout)
    assert peaks[40]["tokens"] > 8 * peaks[4]["tokens"]
    growth_mb = (peaks[40]["peak_kb"] - peaks[4]["peak_kb"]) / 1024
    assert growth_mb < 30, f"peak memory grew by {growth_mb:.0f} MB from a 4 MB to a 40 MB corpus"


# ---------------------------------------------------------------- errors

def test_disk_full_keeps_the_whole_shards_and_resumes(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "c.jsonl", documents(1000))
    cfg = data(src, tmp_path, shard_tokens=3000)
    real = ShardWriter._write
    calls = {"n": 0}

    def full(self, payload):
        calls["n"] += 1
        if calls["n"] > 60:
            self.file.write = lambda _: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        real(self, payload)

    monkeypatch.setattr(ShardWriter, "_write", full)
    message = error("no room left on the disk", prepare, cfg, progress=False)
    assert "data.cache_dir" in message and "resumes" in message
    folder = next((tmp_path / "cache" / "prepared").iterdir())
    kept = shard_bytes(folder)
    assert kept and not list(folder.glob("*.part"))
    monkeypatch.undo()
    ds = prepare(cfg, progress=False)
    assert all(shard_bytes(ds.folder)[name] == data_ for name, data_ in kept.items())
    assert sorted(split_docs(ds, "train") + split_docs(ds, "val")) == sorted(documents(1000))


def test_a_damaged_prepared_dataset_is_a_one_line_error(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", documents(300))
    cfg = data(src, tmp_path, shard_tokens=2000)
    ds = prepare(cfg, progress=False)
    shard = ds.folder / ds.manifest["splits"]["train"]["shards"][1]["file"]
    good = shard.read_bytes()
    shard.write_bytes(good[:-7])
    message = error("truncated", prepare, cfg, progress=False)
    assert str(ds.folder) in message and "delete" in message
    shard.write_bytes(good)
    tok = ds.folder / "tokenizer.json"
    original = tok.read_text()
    tok.write_text(original.replace('"a"', '"a", "@"') if '"a"' in original else original + " ")
    error("not the tokenizer its manifest was prepared with", prepare, cfg, progress=False)
    tok.write_text(original)
    from speedrun.data import build_tokenizer

    other = tmp_path / "other.json"
    other.write_text(build_tokenizer("char", ["xyz"]).to_json())
    error("prepared with another tokenizer than data.tokenizer_file", prepare,
          replace(cfg, source=str(ds.folder), tokenizer_file=str(other)), progress=False)


def test_bad_sources_are_one_line_errors(tmp_path):
    table = pa.table({"body": ["some text", "more text"]})
    pq.write_table(table, tmp_path / "p.parquet")
    error("no column 'text'.*body.*set data.text_field", prepare, data(tmp_path / "p.parquet", tmp_path),
          progress=False)
    write_jsonl(tmp_path / "blank.jsonl", ["", "  "])
    error("has no text", prepare, data(tmp_path / "blank.jsonl", tmp_path), progress=False)
    write_jsonl(tmp_path / "two.jsonl", ["one document", "another one"])
    error("fell in validation", prepare, data(tmp_path / "two.jsonl", tmp_path, val_fraction=0.01), progress=False)
    (tmp_path / "empty").mkdir()
    error("no .txt, .jsonl or .parquet files", prepare, data(tmp_path / "empty", tmp_path), progress=False)


def test_parquet_is_read_in_batches(tmp_path):
    docs = documents(3000)
    pq.write_table(pa.table({"text": docs, "id": list(range(3000))}), tmp_path / "p.parquet", row_group_size=500)
    ds = prepare(data(tmp_path / "p.parquet", tmp_path), progress=False)
    assert sorted(split_docs(ds, "train") + split_docs(ds, "val")) == sorted(docs)


def test_prepare_command_then_train_on_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    src = write_jsonl(tmp_path / "c.jsonl", documents(400))
    run = lambda *a: subprocess.run([sys.executable, "-m", "speedrun", *a], capture_output=True, text=True)
    out = run("prepare", str(src), "shakespeare-bpe", "data.vocab_size=300", "--out", str(tmp_path / "prep"),
              "--quiet")
    assert out.returncode == 0, out.stderr
    assert "documents read" in out.stdout and f"--data {tmp_path / 'prep'}" in out.stdout
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert manifest["settings"]["vocab_size"] == 300
    trained = run("train", "shakespeare-bpe", "--data", str(tmp_path / "prep"), "--out", str(tmp_path / "run"),
                  "--quiet", "train.steps=2", "train.time_budget=0", "model.n_layer=1", "model.n_embd=32",
                  "model.n_head=2", "data.sample_tokens=0", "train.tensorboard=false")
    assert trained.returncode == 0, trained.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2
    bad = run("prepare", str(tmp_path / "missing.jsonl"), "--quiet")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr
    addition = run("prepare", str(src), "addition", "--quiet")
    assert addition.returncode == 2 and "reads no corpus" in addition.stderr
