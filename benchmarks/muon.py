"""Muon's cost per token against AdamW's, in both precisions (by hand, not in CI).

At the `shakespeare-char-long` (2 x 256, context 128) and `chat-base` (4 x 256,
context 256) shapes, times eager optimizer steps with AdamW and with Muon, in
`dtype=auto` (bf16 where this CPU runs it natively) and with `dtype=float32`
forced (what a CPU without native bf16 gets). The two optimizers alternate,
`--repeats` times each; the medians and their ratio are printed. Target: Muon
within 15% of AdamW's tokens per second everywhere.

    python benchmarks/muon.py [--data ../shared/data/tinyshakespeare.txt] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe  # noqa: E402
from throughput import DEFAULT_DATA, time_steps  # noqa: E402

SHAPES = {  # recipe and the overrides that make it run on the benchmark's text
    "shakespeare-char-long (2 x 256, context 128)": ("shakespeare-char-long", []),
    "chat-base (4 x 256, context 256, BPE 2048)": ("chat-base", ["data.vocab_size=2048"]),
}
OPTIMIZERS = {"adamw": ["optim.name=adamw"], "muon": ["optim.name=muon"]}
TARGET_RATIO = 0.85


def main() -> None:
    from speedrun.config import load_config
    from speedrun.run import Run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"error: {args.data} not found; pass --data PATH to tinyshakespeare.txt")
    print(describe())
    data = [f"data.source={json.dumps(str(args.data))}", "train.compile=false", "train.time_budget=0"]
    print(f"{'shape':<46} {'dtype':>8} {'AdamW tok/s':>12} {'Muon tok/s':>11} {'Muon/AdamW':>10}")
    for shape, (recipe, extra) in SHAPES.items():
        for dtype in ("auto", "float32"):
            rates = {name: [] for name in OPTIMIZERS}
            for _ in range(args.repeats):
                for name, overrides in OPTIMIZERS.items():
                    cfg = load_config(recipe, data + extra + overrides + [f"dtype={dtype}"])
                    tokens = cfg.train.batch_size * cfg.model.block_size
                    rates[name].append(tokens / time_steps(cfg, args.steps, args.warmup)[0])
            resolved = Run(dataclasses.replace(cfg, device="cpu")).runtime().dtype_name
            adamw, muon = (statistics.median(rates[n]) for n in OPTIMIZERS)
            verdict = "met" if muon / adamw >= TARGET_RATIO else "MISSED"
            print(f"{shape:<46} {dtype + '=' + resolved:>8} {adamw:>12,.0f} {muon:>11,.0f} "
                  f"{muon / adamw:>9.2f}x  {verdict}", flush=True)


if __name__ == "__main__":
    main()
