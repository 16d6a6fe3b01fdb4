"""Training throughput at the nanoGPT CPU model shape (by hand, not in CI).

The model shape stays `nanogpt-cpu`'s (4 layers x 128, context 64, character
vocabulary); each row changes one setting from the fp32 AdamW baseline, and the
last row combines the ones that helped. Every variant is timed in this one
process on the same text over the same number of optimizer steps, after warm-up
steps (which also absorb compilation), and the tokens per second are printed
with the ratio to the baseline.

    python benchmarks/throughput.py [--data ../shared/data/tinyshakespeare.txt] [--steps 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

OUR_BLOCK = ["model.pos=rope", "model.norm=rmsnorm", "model.mlp=relu2", "model.qk_norm=true",
             "model.zero_init_proj=true", "model.tie_embeddings=false"]
VARIANTS = [  # (name, overrides, compile), each measured against the baseline on its own
    ("nanogpt-cpu: fp32, AdamW, batch 12", [], False),
    ("our block (RoPE, RMSNorm, QK-norm, ReLU^2)", OUR_BLOCK, False),
    ("ReLU^2 MLP only", ["model.mlp=relu2"], False),
    ("Muon", ["optim.name=muon", "optim.muon_lr=0.05", "optim.lr=5e-3"], False),
    ("bf16 autocast", ["dtype=bfloat16"], False),
    ("batch 64", ["train.batch_size=64"], False),
    ("torch.compile", [], True),
    ("fastest found: ReLU^2 + batch 64 + compile", ["model.mlp=relu2", "train.batch_size=64"], True),
]


def time_steps(cfg, steps: int, warmup: int, compile_model: bool = False) -> tuple[float, float]:
    """(seconds per optimizer step, seconds of warm-up) for `cfg`, timed like the trainer's clock."""
    from speedrun.run import Run
    from speedrun.step import train_step

    rt, parts = Run(cfg).parts()
    cfg, task, model, optimizer = parts.cfg, parts.task, parts.model, parts.optimizer
    step_fn = torch.compile(model) if compile_model else model
    generator = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(warmup):
        train_step(step_fn, model, optimizer, task, cfg, rt, generator)
    t1 = time.perf_counter()
    for _ in range(steps):
        train_step(step_fn, model, optimizer, task, cfg, rt, generator)
    return (time.perf_counter() - t1) / steps, t1 - t0


def main() -> None:
    from speedrun.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timings of each variant (median reported)")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"error: {args.data} not found; pass --data PATH to tinyshakespeare.txt")

    data = [f"data.source={json.dumps(str(args.data))}"]
    baseline = None
    print(f"{'variant':<48} {'tokens/s':>10} {'spread':>17} {'vs baseline':>11} {'warm-up s':>9}")
    for name, overrides, compile_model in VARIANTS:
        cfg = load_config("nanogpt-cpu", data + overrides)
        tokens = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
        rates, warm = [], []
        for _ in range(args.repeats):
            seconds, warmup_seconds = time_steps(cfg, args.steps, args.warmup, compile_model)
            rates.append(tokens / seconds)
            warm.append(warmup_seconds)
        rate = statistics.median(rates)
        baseline = baseline or rate
        print(f"{name:<48} {rate:>10,.0f} {min(rates):>8,.0f}-{max(rates):<8,.0f} {rate / baseline:>10.2f}x "
              f"{statistics.median(warm):>9.1f}", flush=True)


if __name__ == "__main__":
    main()
