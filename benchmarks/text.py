"""Tiny Shakespeare benchmark (by hand, not in CI): `nanogpt-cpu` against `shakespeare-char`.

Runs the recipes side by side on the same text, alternating, each in its own
process, and prints for each run: val loss at the end (whole validation split),
time_to_target for val loss 1.8857 (nanoGPT's result for its CPU recipe), tokens
per second; then medians and the ratio of the times to target. In each round,
`shakespeare-char-long` then trains for exactly the training seconds that round's
`nanogpt-cpu` run took, for the val loss reached in the baseline's wall-clock.
Last, the training throughput at the `nanogpt-cpu` model shape with the fastest
settings found is timed against the fp32 AdamW baseline (benchmarks/throughput.py).

    python benchmarks/text.py [--data ../shared/data/tinyshakespeare.txt] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TARGET = 1.8857  # nanoGPT's val loss at step 2000 of its CPU recipe on this machine
SAME_TIME_TARGET = 1.55  # the speed issue's target for the baseline's wall-clock
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def run(recipe: str, data: Path, out: Path, extra: list[str]) -> dict:
    # Evaluate often enough that time_to_target is not rounded up to a coarse grid;
    # evaluation time is excluded from train_seconds either way.
    cmd = [sys.executable, "-m", "speedrun", "train", recipe, f"train.target_val_loss={TARGET}",
           "train.stop_at_target=false", "train.eval_every=100", "data.sample_tokens=0",
           "train.tensorboard=false", *extra, "--data", str(data), "--out", str(out), "--quiet"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", type=int, default=1, help="runs of each recipe (medians need 3 or more)")
    parser.add_argument("--baseline", default="nanogpt-cpu")
    parser.add_argument("--recipe", default="shakespeare-char")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--long-recipe", default="shakespeare-char-long",
                        help="trained for the baseline's training seconds; '' skips it")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"error: {args.data} not found; pass --data PATH to tinyshakespeare.txt")

    results: dict[str, list[dict]] = {args.baseline: [], args.recipe: []}
    long_runs: list[dict] = []
    print(f"{'recipe':<18} {'run':>3} {'val_loss':>9} {'val_bpb':>8} {'time_to_target_s':>17} "
          f"{'train_s':>8} {'steps':>6} {'tokens/s':>10} {'MFU':>6} {'dtype':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for recipe in results:
                s = run(recipe, args.data, Path(tmp) / f"{recipe}-{i}", [])
                results[recipe].append(s)
                m = s["metrics"]
                print(f"{recipe:<18} {i:>3} {m['val_loss']:>9.4f} {m['val_bpb']:>8.4f} "
                      f"{fmt(s['time_to_target']):>17} {s['train_seconds']:>8.1f} {s['steps']:>6} "
                      f"{s['tokens_per_second']:>10,.0f} {s['mfu']:>6.1%} {s['dtype']:>9}", flush=True)
            if args.long_recipe:
                budget = results[args.baseline][-1]["train_seconds"]
                s = run(args.long_recipe, args.data, Path(tmp) / f"long-{i}",
                        [f"train.time_budget={budget:.1f}", "train.steps=1000000", "train.eval_every=0"])
                long_runs.append(s)
                print(f"{args.long_recipe:<18} {i:>3} {s['metrics']['val_loss']:>9.4f} {s['metrics']['val_bpb']:>8.4f} "
                      f"{'(budget ' + format(budget, '.1f') + ' s)':>17} {s['train_seconds']:>8.1f} {s['steps']:>6} "
                      f"{s['tokens_per_second']:>10,.0f} {s['mfu']:>6.1%} {s['dtype']:>9}", flush=True)

    def med(recipe, key):
        values = [s[key] for s in results[recipe] if s[key] is not None]
        return statistics.median(values) if len(values) == len(results[recipe]) else None

    print()
    for recipe, runs in results.items():
        losses = [s["metrics"]["val_loss"] for s in runs]
        ttt = [s["time_to_target"] for s in runs]
        print(f"{recipe}: val_loss median {statistics.median(losses):.4f} (min {min(losses):.4f}, max {max(losses):.4f}); "
              f"time_to_target median {fmt(med(recipe, 'time_to_target'))} s "
              f"(runs: {', '.join(fmt(t) for t in ttt)}); tokens/s median {med(recipe, 'tokens_per_second'):,.0f}")
    ours = med(args.recipe, "time_to_target")
    base = med(args.baseline, "time_to_target")
    bound = ""
    if base is None:  # the baseline never got there: its whole run is a lower bound on its time
        base, bound = med(args.baseline, "train_seconds"), ">= "
        print(f"{args.baseline} did not reach {TARGET} in {'all its runs' if args.runs > 1 else 'its run'}; "
              f"its full training time is used, a lower bound on its time to target")
    if ours:
        print(f"time to val loss {TARGET}: {args.recipe} {ours:.1f} s vs {args.baseline} {bound}{base:.1f} s: "
              f"ratio 1/{base / ours:.2f}{' or better' if bound else ''}")
    else:
        print(f"{args.recipe} never reached {TARGET}: no time ratio")
    peak = results[args.recipe][0]["peak_flops"]
    print(f"MFU of {args.recipe}: median {med(args.recipe, 'mfu'):.1%} of the measured "
          f"{peak / 1e9:,.0f} GFLOP/s {results[args.recipe][0]['dtype']} matmul peak")
    if long_runs:
        losses = [s["metrics"]["val_loss"] for s in long_runs]
        loss = statistics.median(losses)
        print(f"in the baseline's training seconds, {args.long_recipe} reaches val_loss {loss:.4f} "
              f"(median; runs: {', '.join(f'{x:.4f}' for x in losses)}); target <= {SAME_TIME_TARGET}: "
              f"{'met' if loss <= SAME_TIME_TARGET else 'missed by ' + format(loss - SAME_TIME_TARGET, '.4f')}")
    print(f"{args.baseline} final val_loss vs nanoGPT's {TARGET}: "
          f"{statistics.median(s['metrics']['val_loss'] for s in results[args.baseline]) - TARGET:+.4f}")
    if not args.skip_throughput:
        print_throughput_ratio(args.data)


def print_throughput_ratio(data: Path, repeats: int = 3) -> None:
    from throughput import VARIANTS, time_steps

    from speedrun.config import load_config

    rates = {}
    for name, overrides, compile_model in (VARIANTS[0], VARIANTS[-1]):
        cfg = load_config("nanogpt-cpu", [f"data.source={json.dumps(str(data))}", *overrides])
        tokens = cfg.train.batch_size * cfg.model.block_size
        rates[name] = [tokens / time_steps(cfg, 40, 5, compile_model)[0] for _ in range(repeats)]
    (base_name, base), (fast_name, fast) = rates.items()
    ratio = statistics.median(fast) / statistics.median(base)
    print(f"throughput at the {base_name.split(':')[0]} shape: {fast_name} {statistics.median(fast):,.0f} tok/s "
          f"vs {base_name} {statistics.median(base):,.0f} tok/s (medians of {repeats}): {ratio:.2f}x; target 2x: "
          f"{'met' if ratio >= 2 else 'missed'}")


if __name__ == "__main__":
    main()
