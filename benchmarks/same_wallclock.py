"""Loss at nanoGPT's wall-clock, from a cold start, in both precisions (by hand, not in CI).

Each round (a different seed) runs the `nanogpt-cpu` command and times it with a
stopwatch; then `shakespeare-char-long` twice, with `dtype=auto` (bf16 where this CPU
runs it natively) and with `dtype=float32` forced (what a CPU without native bf16
gets), each given that round's baseline wall-clock as its time budget, less a
reserve for its final evaluation. Every run starts cold: a fresh speedrun cache
(token files, matmul peak) and a fresh Inductor cache, as a new user's first run.
Printed per run: the whole command's stopwatch seconds, val (and test) loss, steps;
then medians per precision against round one's target (val <= 1.60; the speed issue's
1.55 is `python -m benchmarks speed --targets 2`'s).

    python -m benchmarks same_wallclock [--data ../shared/data/tinyshakespeare.txt] [--rounds 3]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import (ROUND_ONE_VAL_LOSS_AT_NANOGPT_CPU_WALLCLOCK, parser, print_machine, summarise,
                               summary_line, write_record)
from benchmarks.timing import COLD_NOTE, cold_run, resolves_to_fp32

ROW_KEYS = ("wall_seconds", "steps", "tokens_per_second", "compile_seconds", "dtype")


def run_row(label: str, seed: int, s: dict) -> dict:
    """One run as printed (a line) and as recorded (a row)."""
    m = s["metrics"]
    test = f"{m['test_loss']:.4f}" if m.get("test_loss") is not None else "-"
    print(f"{label:<34} {seed:>4} {s['stopwatch']:>9.1f} {s['wall_seconds']:>7.1f} {m['val_loss']:>8.4f} "
          f"{test:>9} {s['steps']:>6} {s['tokens_per_second']:>9,.0f} {s['compile_seconds']:>6.1f} {s['dtype']:>9}",
          flush=True)
    return {"run": label, "seed": seed, "stopwatch_seconds": round(s["stopwatch"], 2),
            **{k: s[k] for k in ROW_KEYS}, "val_loss": m["val_loss"], "test_loss": m.get("test_loss")}


def main() -> None:
    p = parser(__doc__, "same_wallclock", data=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reserve", type=float, default=8.0,
                   help="seconds of the baseline's wall-clock kept for the final evaluation and exit")
    p.add_argument("--recipe", default="shakespeare-char-long")
    args = p.parse_args()
    print_machine()
    print(f"{'run':<34} {'seed':>4} {'stopwatch':>9} {'wall_s':>7} {'val_loss':>8} {'test_loss':>9} {'steps':>6} "
          f"{'tok/s':>9} {'comp_s':>6} {'dtype':>9}")
    ours: dict[str, list[dict]] = {"auto": [], "float32": []}
    base_runs, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.rounds + 1):
            base = cold_run("nanogpt-cpu", args.data, Path(tmp) / f"base-{seed}", [f"train.seed={seed}"])
            base_runs.append(base)
            rows.append(run_row("nanogpt-cpu", seed, base))
            budget = base["stopwatch"] - args.reserve
            for dtype in ours:
                if dtype == "auto" and resolves_to_fp32(args.recipe):
                    continue  # the same fp32 run as dtype=float32: run it once, report it for both
                s = cold_run(args.recipe, args.data, Path(tmp) / f"{dtype}-{seed}",
                             [f"train.seed={seed}", f"dtype={dtype}", f"train.time_budget={budget:.1f}"])
                ours[dtype].append(s)
                rows.append(run_row(f"{args.recipe} dtype={dtype}", seed, s)
                            | {"fraction_of_baseline_wall": s["stopwatch"] / base["stopwatch"]})
    if not ours["auto"]:
        ours["auto"] = ours["float32"]
    print()
    summary = [summarise("nanogpt-cpu whole command", [s["stopwatch"] for s in base_runs], unit="s"),
               summarise("nanogpt-cpu val_loss", [s["metrics"]["val_loss"] for s in base_runs])]
    summary += [summarise("val_loss at nanogpt-cpu's wall-clock", [s["metrics"]["val_loss"] for s in runs],
                          ROUND_ONE_VAL_LOSS_AT_NANOGPT_CPU_WALLCLOCK, run=args.recipe, dtype=dtype,
                          trained_in=runs[0]["dtype"]) for dtype, runs in ours.items()]
    for row in summary:
        print(summary_line(row))
    write_record("same_wallclock", {"recipe": args.recipe, "reserve_seconds": args.reserve, "runs": rows,
                                    "summary": summary}, caches="cold", out=args.out,
                 seeds=list(range(1, args.rounds + 1)),
                 caches_note=COLD_NOTE)


if __name__ == "__main__":
    main()
