"""Loss at nanoGPT's wall-clock, from a cold start, in both precisions (by hand, not in CI).

Each round (a different seed) runs the `nanogpt-cpu` command and times it with a
stopwatch; then `shakespeare-char-long` twice, with `dtype=auto` (bf16 where this CPU
runs it natively) and with `dtype=float32` forced (what a CPU without native bf16
gets), each given that round's baseline wall-clock as its time budget, less a
reserve for its final evaluation. Every run starts cold: a fresh speedrun cache
(token files, matmul peak) and a fresh Inductor cache, as a new user's first run.
Printed per run: the whole command's stopwatch seconds, val (and test) loss, steps;
then medians per precision against the target (val <= 1.60).

    python benchmarks/same_wallclock.py [--data ../shared/data/tinyshakespeare.txt] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe  # noqa: E402

TARGET = 1.60
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def cold_command(args: list[str], out: Path, summary_file: Path) -> dict:
    """`speedrun ARGS` in a fresh process with empty caches (named after `out`); the
    summary it wrote plus the stopwatch."""
    env = dict(os.environ, SPEEDRUN_CACHE=str(out) + "-cache", TORCHINDUCTOR_CACHE_DIR=str(out) + "-inductor")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "speedrun", *args], check=True, stdout=subprocess.DEVNULL, env=env)
    summary = json.loads(summary_file.read_text())
    summary["stopwatch"] = time.perf_counter() - t0
    return summary


def cold_run(recipe: str, data: Path, out: Path, extra: list[str]) -> dict:
    """One whole training command, cold; its summary plus the stopwatch."""
    return cold_command(["train", recipe, "data.sample_tokens=0", "train.tensorboard=false", *extra,
                         "--data", str(data), "--out", str(out), "--quiet"], out, out / "summary.json")


def resolves_to_fp32(recipe: str, overrides: list[str] = ()) -> bool:
    """Whether dtype=auto trains this recipe in fp32 on this machine (as on a CPU without native bf16)."""
    from speedrun.config import load_config
    from speedrun.run import Run

    return Run(load_config(recipe, [*overrides, "device=cpu", "dtype=auto"])).runtime().dtype_name == "float32"


def line(label: str, seed: int, s: dict) -> str:
    m = s["metrics"]
    test = f"{m['test_loss']:.4f}" if m.get("test_loss") is not None else "-"
    return (f"{label:<34} {seed:>4} {s['stopwatch']:>9.1f} {s['wall_seconds']:>7.1f} {m['val_loss']:>8.4f} "
            f"{test:>9} {s['steps']:>6} {s['tokens_per_second']:>9,.0f} {s['compile_seconds']:>6.1f} {s['dtype']:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reserve", type=float, default=8.0,
                        help="seconds of the baseline's wall-clock kept for the final evaluation and exit")
    parser.add_argument("--recipe", default="shakespeare-char-long")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"error: {args.data} not found; pass --data PATH to tinyshakespeare.txt")
    print(describe())
    print(f"{'run':<34} {'seed':>4} {'stopwatch':>9} {'wall_s':>7} {'val_loss':>8} {'test_loss':>9} {'steps':>6} "
          f"{'tok/s':>9} {'comp_s':>6} {'dtype':>9}")
    ours: dict[str, list[dict]] = {"auto": [], "float32": []}
    base_runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.rounds + 1):
            base = cold_run("nanogpt-cpu", args.data, Path(tmp) / f"base-{seed}", [f"train.seed={seed}"])
            base_runs.append(base)
            print(line("nanogpt-cpu", seed, base), flush=True)
            budget = base["stopwatch"] - args.reserve
            for dtype in ours:
                if dtype == "auto" and resolves_to_fp32(args.recipe):
                    continue  # the same fp32 run as dtype=float32: run it once, report it for both
                s = cold_run(args.recipe, args.data, Path(tmp) / f"{dtype}-{seed}",
                             [f"train.seed={seed}", f"dtype={dtype}", f"train.time_budget={budget:.1f}"])
                s["baseline_stopwatch"] = base["stopwatch"]
                ours[dtype].append(s)
                print(line(f"{args.recipe} dtype={dtype}", seed, s), flush=True)
    if not ours["auto"]:
        ours["auto"] = ours["float32"]
    print()
    walls = [s["stopwatch"] for s in base_runs]
    print(f"nanogpt-cpu whole command: median {statistics.median(walls):.1f} s "
          f"(min {min(walls):.1f}, max {max(walls):.1f}); val_loss median "
          f"{statistics.median(s['metrics']['val_loss'] for s in base_runs):.4f}")
    for dtype, runs in ours.items():
        vals = [s["metrics"]["val_loss"] for s in runs]
        over = [s["stopwatch"] / s["baseline_stopwatch"] for s in runs]
        verdict = "met" if statistics.median(vals) <= TARGET else "MISSED"
        print(f"{args.recipe} dtype={dtype} ({runs[0]['dtype']}): val_loss median {statistics.median(vals):.4f} "
              f"(min {min(vals):.4f}, max {max(vals):.4f}) vs target <= {TARGET}: {verdict}; "
              f"whole command / baseline's: {', '.join(f'{r:.2f}' for r in over)}")


if __name__ == "__main__":
    main()
