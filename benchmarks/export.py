"""Every bundled recipe as shipped leaves speedrun (issue 27), by hand, not in CI.

For each recipe with a model of its own (chat-sft fine-tunes chat-base's), at its full size:
a short run (`speedrun train RECIPE train.steps=N`, on Tiny Shakespeare for the text recipes;
the GPU-scale ones take one step of one sequence), then `speedrun export RUN --to hf` and,
where llama.cpp has the architecture, `--to gguf`. Measured per recipe: the class or custom
code and why, max |logit difference| from speedrun's own model over two random full contexts
(transformers for hf, speedrun reading the GGUF back), and greedy text: `speedrun sample RUN`
against transformers' `generate` on the export, from a fresh document, for 64 tokens or as
many as the context holds. Targets: every recipe exports, greedy text equal, max difference
<= 1e-5 (0.0 where the class is native).

    python -m benchmarks export [--recipes addition shakespeare-char ...] [--workdir DIR] [--out results/export.json]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import DEFAULT_DATA, parser, print_machine, write_record

TOLERANCE = 1e-5
GREEDY_TOKENS = 64
SHORT = ["train.time_budget=0", "train.eval_every=0", "train.compile=false", "train.tensorboard=false"]
# The GPU-scale recipes, one step of one sequence on a CPU: the export, not the training, is measured.
ONE_STEP = ["train.steps=1", "train.tokens=0", "train.tokens_per_param=0", "train.batch_size=1",
            "train.batch_tokens=0", "train.grad_accum=1", "data.eval_tokens=4096", "data.tokenizer_chars=2000000"]
GPU_SCALE = ("gpt2-124m", "base-d20")


def speedrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "speedrun", *args], capture_output=True, text=True)


def train(recipe: str, data: Path, out: Path) -> float:
    from speedrun.config import load_config

    args = ["train", recipe, "--out", str(out), "--quiet", *SHORT]
    args += ONE_STEP if recipe in GPU_SCALE else ["train.steps=30"]
    if load_config(recipe).task == "text":
        args += ["--data", str(data), "data.sample_tokens=0"]
    t0 = time.perf_counter()
    done = speedrun(*args)
    if done.returncode != 0:
        raise RuntimeError(f"speedrun {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def greedy(run: Path, export: Path, custom: bool) -> dict:
    """`speedrun sample RUN` (greedy, from a fresh document) against transformers' generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speedrun.loading import load_model

    _, tok, cfg, _ = load_model(run)
    n = min(GREEDY_TOKENS, cfg.model.block_size - 1)
    done = speedrun("sample", str(run), "--max-new-tokens", str(n))
    ours = done.stdout.removesuffix("\n")
    hf = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32, trust_remote_code=custom).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(export), trust_remote_code=custom)
    ids = torch.tensor([[tok.eot_id]])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          eos_token_id=tok.eot_id, pad_token_id=tok.eot_id)
    new = out[0, 1:].tolist()
    if new and new[-1] == tok.eot_id:
        new = new[:-1]
    theirs = hf_tok.decode(new)
    return {"greedy_tokens": n, "greedy_equal": ours == theirs, "greedy_text": ours[:80]}


def measure(recipe: str, data: Path, workdir: Path) -> dict:
    from speedrun.config import ConfigError
    from speedrun.export import export_run

    run, hf, gguf = workdir / f"{recipe}-run", workdir / f"{recipe}-hf", workdir / f"{recipe}-gguf"
    for path in (run, hf, gguf):
        shutil.rmtree(path, ignore_errors=True)
    row = {"recipe": recipe, "train_seconds": round(train(recipe, data, run), 1)}
    t0 = time.perf_counter()
    result = export_run(run, hf)
    row |= {"hf": result["architecture"], "custom_code": result["custom_code"],
            "hf_max_logit_diff": result["max_logit_diff"], "hf_export_seconds": round(time.perf_counter() - t0, 1)}
    row |= greedy(run, hf, result["custom_code"])
    try:
        result = export_run(run, gguf, to="gguf")
        row |= {"gguf": result["architecture"], "gguf_max_logit_diff": result["max_logit_diff"]}
    except ConfigError as e:
        row |= {"gguf": None, "gguf_refused": str(e)}
    limit = 0.0 if not row["custom_code"] else TOLERANCE
    row["met"] = row["greedy_equal"] and row["hf_max_logit_diff"] <= limit
    for path in (run, hf, gguf):  # the GPU-scale exports are gigabytes
        shutil.rmtree(path, ignore_errors=True)
    return row


def main() -> int:
    from speedrun.config import recipe_names

    p = parser(__doc__, "export", data=True)
    recipes = [r for r in recipe_names() if r != "chat-sft"]
    p.add_argument("--recipes", nargs="+", default=recipes, choices=recipes)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/speedrun-export-bench"))
    args = p.parse_args()
    print_machine()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for recipe in args.recipes:
        row = measure(recipe, args.data, args.workdir)
        rows.append(row)
        gguf = (f"{row['gguf']} diff {row['gguf_max_logit_diff']:.1e}" if row["gguf"]
                else "GGUF refused")
        print(f"{recipe}: {row['hf']}; max |logit diff| {row['hf_max_logit_diff']:.1e}; greedy "
              f"{row['greedy_tokens']} tokens {'equal' if row['greedy_equal'] else 'DIFFER'}; {gguf}"
              f" -> {'met' if row['met'] else 'MISSED'}", flush=True)
        write_record("export", {"tolerance": TOLERANCE, "greedy_tokens": GREEDY_TOKENS, "rows": rows},
                     caches="warm", out=args.out,
                     caches_note="not a timing benchmark: parity figures, one run per recipe")
    return 0 if all(r["met"] for r in rows) else 1
