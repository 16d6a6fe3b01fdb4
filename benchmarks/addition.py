"""Addition speedrun benchmark (by hand, not in CI).

Trains recipe `addition` with 5 seeds, each in its own process with empty caches (`--warm`:
the user's caches as they are), and prints per seed the headline, `time_to_verified`
(wall-clock from process start until the exhaustive check over all 1,000,000 pairs
passed: setup, training, every probe, sample check and failed full check included), the benchmark's own stopwatch around the whole command, training
seconds, the passing check's seconds, the failed full checks, and exact match on all
pairs and on the pairs never drawn for training. Then the medians against the targets,
and 20 timed iterations of `addition-reference` (the reference report's config).

    python -m benchmarks addition [--seeds 1 2 3 4 5] [--warm] [key=value ...]   # e.g. dtype=float32
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    ADDITION_CHECK_SECONDS,
    ADDITION_TIME_TO_VERIFIED_SECONDS,
    parser,
    print_machine,
    summarise,
    summary_line,
    write_record,
)
from benchmarks.timing import COLD_NOTE, cold_command, time_steps
from speedrun.rundir import RunDir

REFERENCE_ITERATIONS = 5000  # the reference report's run of addition-reference


def run_seed(seed: int, overrides: list[str], workdir: Path, warm: bool = False) -> dict:
    """One seed's whole command (cold unless `warm`: then the user's caches, as they are), its
    summary, the stopwatch and the failed full checks its metrics record."""
    out = workdir / f"seed{seed}"
    args = ["train", "addition", f"train.seed={seed}", *overrides, "--out", str(out), "--quiet"]
    if warm:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "speedrun", *args], check=True, stdout=subprocess.DEVNULL)
        summary = {**RunDir(out).read_summary(), "stopwatch": time.perf_counter() - t0}
    else:
        summary = cold_command(args, out, out)
    records = RunDir(out).read_metrics()
    summary["failed_full_checks"] = sum(1 for r in records if "exhaustive_checked" in r and not r.get("verified"))
    return summary


def main() -> None:
    p = parser(__doc__, "addition")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--warm", action="store_true", help="the user's caches as they are, instead of empty ones per seed")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    print_machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'seed':>4} {'to_verified':>11} {'stopwatch':>9} {'train_s':>7} {'steps':>5} {'check_s':>7} "
              f"{'eval_s':>6} {'failed':>6} {'exact_match':>11} {'unseen':>8} {'dtype':>8}")
        for seed in args.seeds:
            s = run_seed(seed, args.overrides, Path(tmp), args.warm)
            m = s["metrics"]
            ttv = s["time_to_verified"]
            print(f"{seed:>4} {ttv if ttv is not None else float('nan'):>11.2f} {s['stopwatch']:>9.2f} "
                  f"{s['train_seconds']:>7.2f} {s['steps']:>5} {m['check_seconds']:>7.2f} {s['eval_seconds']:>6.2f} "
                  f"{s['failed_full_checks']:>6} {m['exact_match']:>11.6f} {m['exact_match_unseen_pairs']:>8.6f} "
                  f"{s['dtype']:>8}", flush=True)
            rows.append({"seed": seed, "time_to_verified": ttv, "stopwatch_seconds": s["stopwatch"],
                         "train_seconds": s["train_seconds"], "steps": s["steps"], "check_seconds": m["check_seconds"],
                         "eval_seconds": s["eval_seconds"], "failed_full_checks": s["failed_full_checks"],
                         "exact_match": m["exact_match"], "exact_match_unseen_pairs": m["exact_match_unseen_pairs"],
                         "verified": m["verified"], "dtype": s["dtype"]})
    verified = [r["time_to_verified"] for r in rows if r["time_to_verified"] is not None]
    all_exact = all(r["verified"] for r in rows)
    summary = [summarise("time_to_verified (wall-clock)", verified, ADDITION_TIME_TO_VERIFIED_SECONDS, unit="s")
               ] if verified else []
    summary += [summarise("whole command, benchmark's stopwatch", [r["stopwatch_seconds"] for r in rows], unit="s"),
                summarise("train_seconds", [r["train_seconds"] for r in rows], unit="s"),
                summarise("passing exhaustive check seconds", [r["check_seconds"] for r in rows],
                          ADDITION_CHECK_SECONDS, unit="s")]
    for row in summary:
        print(summary_line(row))
    print(f"every seed exact on all 1,000,000 pairs: {'yes' if all_exact else 'NO'}")
    payload = {"overrides": args.overrides, "every_seed_exact": all_exact, "runs": rows, "summary": summary}
    if not args.skip_reference:
        from speedrun.config import load_config

        per_iter = time_steps(load_config("addition-reference"), 20, 2)[0]
        payload["reference"] = [{"recipe": "addition-reference", "seconds_per_iteration": per_iter,
                                 "projected_hours": per_iter * REFERENCE_ITERATIONS / 3600}]
        print(f"addition-reference: {per_iter:.3f} s/iteration, projected {REFERENCE_ITERATIONS} iterations: "
              f"{per_iter * REFERENCE_ITERATIONS / 3600:.2f} h")
    write_record("addition", payload, caches="warm" if args.warm else "cold", out=args.out, seeds=args.seeds,
                 caches_note="the user's SPEEDRUN_CACHE (its matmul peak) and Inductor cache, as they are"
                 if args.warm else COLD_NOTE)


if __name__ == "__main__":
    main()
