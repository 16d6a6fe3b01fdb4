"""Addition speedrun benchmark (by hand, not in CI).

Trains recipe `addition` with 5 seeds, each in its own process, and prints per seed the
training seconds, steps, exact match over all 1,000,000 pairs and the exhaustive check's
seconds; then the median and max of train_seconds. Then times 20 iterations of
`addition-reference` (the reference report's config) and projects its 5000 iterations.

    python benchmarks/addition.py [--seeds 1 2 3 4 5] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_TRAIN_SECONDS = 10.0
TARGET_EVAL_SECONDS = 10.0


def run_seed(seed: int, overrides: list[str], workdir: Path) -> dict:
    out = workdir / f"seed{seed}"
    cmd = [sys.executable, "-m", "speedrun", "train", "addition", f"train.seed={seed}", *overrides,
           "--out", str(out), "--quiet"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def time_reference(iters: int = 20, warmup: int = 2) -> float:
    import torch

    from speedrun.config import load_config
    from speedrun.device import setup_runtime
    from speedrun.optim import build_optimizer
    from speedrun.tasks import build_task
    from speedrun.trainer import build_model, train_step

    cfg = load_config("addition-reference")
    rt = setup_runtime(cfg.device, cfg.dtype)
    task = build_task(cfg)
    model = build_model(cfg, task, rt)
    optimizer = build_optimizer(model, cfg.optim)
    generator = torch.Generator().manual_seed(0)
    for _ in range(warmup):
        train_step(model, model, optimizer, task, cfg, rt, generator)
    t0 = time.perf_counter()
    for _ in range(iters):
        train_step(model, model, optimizer, task, cfg, rt, generator)
    return (time.perf_counter() - t0) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'seed':>4} {'train_s':>8} {'steps':>6} {'exact_match':>12} {'evaluated':>10} "
              f"{'check_s':>8} {'eval_s':>7} {'device/dtype':>14}")
        for seed in args.seeds:
            s = run_seed(seed, args.overrides, Path(tmp))
            m = s["metrics"]
            rows.append(s)
            print(f"{seed:>4} {s['train_seconds']:>8.2f} {s['steps']:>6} {m['exact_match']:>12.6f} "
                  f"{m['evaluated']:>10,} {m['check_seconds']:>8.2f} {s['eval_seconds']:>7.2f} "
                  f"{s['device'] + '/' + s['dtype']:>14}", flush=True)
    train_s = [s["train_seconds"] for s in rows]
    check_s = [s["metrics"]["check_seconds"] for s in rows]
    all_exact = all(s["metrics"]["exact_match"] == 1.0 and s["metrics"]["evaluated"] == 1_000_000 for s in rows)
    print(f"train_seconds: median {statistics.median(train_s):.2f}, min {min(train_s):.2f}, max {max(train_s):.2f}"
          f" (target: median <= {TARGET_TRAIN_SECONDS:.0f})")
    print(f"exhaustive check seconds: median {statistics.median(check_s):.2f}, max {max(check_s):.2f}"
          f" (target: <= {TARGET_EVAL_SECONDS:.0f})")
    print(f"every seed exact on all 1,000,000 pairs: {'yes' if all_exact else 'NO'}")
    if not args.skip_reference:
        per_iter = time_reference()
        print(f"addition-reference: {per_iter:.3f} s/iteration, projected 5000 iterations: "
              f"{per_iter * 5000 / 3600:.2f} h ({per_iter * 5000 / statistics.median(train_s):.0f}x our median)")


if __name__ == "__main__":
    main()
