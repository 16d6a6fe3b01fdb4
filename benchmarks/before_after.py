"""Before and after a change (by hand, not in CI): the same whole commands on an older commit and
on this checkout, alternating per seed, so that a refactor that claims "behaviour unchanged"
shows the same figures within noise.

Both commits (the older one and, by default, HEAD) are checked out into temporary git worktrees
and run with their own `src/` first on PYTHONPATH (their recipes too), so uncommitted edits in
this checkout do not leak into either side. Every command is a fresh
process with empty caches (`timing.cold_env`). Per recipe and seed the record holds both
stopwatches and the metrics that decide the run (steps, losses, exact match), and whether they
are identical; printed are the per-seed lines and, per recipe and side, the median and range.

    python -m benchmarks before_after --before f97631a [--after HEAD] [--seeds 1 2 3]
        [--recipes addition shakespeare-char]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    ROOT,
    parser,
    print_machine,
    summarise,
    summary_line,
    write_record,
)
from benchmarks.timing import COLD_NOTE, cold_env
from speedrun.rundir import RunDir

RECIPES = ("addition", "shakespeare-char")
NEEDS_DATA = {"shakespeare-char"}
DECIDING = ("val_loss", "test_loss", "exact_match", "verified")  # summary metrics compared for identity


def worktree(commit: str, where: Path) -> Path:
    """`commit` checked out at `where` (detached, beside this checkout's history)."""
    subprocess.run(["git", "worktree", "add", "--detach", str(where), commit], cwd=ROOT, check=True,
                   capture_output=True)
    return where


def run(side: str, src: Path, recipe: str, seed: int, data: Path, out: Path) -> dict:
    """One whole command, cold, on the package in `src`; stopwatch, steps and deciding metrics."""
    env = cold_env(out)
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    args = ["train", recipe, f"train.seed={seed}", "--out", str(out), "--quiet",
            *(["--data", str(data)] if recipe in NEEDS_DATA else [])]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "speedrun", *args], check=True, stdout=subprocess.DEVNULL, env=env)
    stopwatch = time.perf_counter() - t0
    s = RunDir(out).read_summary()
    return {"side": side, "recipe": recipe, "seed": seed, "stopwatch_seconds": round(stopwatch, 2),
            "steps": s["steps"], "time_to_verified": s.get("time_to_verified"),
            **{k: s["metrics"][k] for k in DECIDING if k in s["metrics"]}}


def imported_from(src: Path) -> str:
    """Where `speedrun` is imported from with `src` first on the path: the check that the older
    commit really runs, not this checkout's installed copy."""
    env = dict(os.environ, PYTHONPATH=str(src))
    return subprocess.run([sys.executable, "-c", "import speedrun; print(speedrun.__file__)"], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    p = parser(__doc__, "before_after", data=True)
    p.add_argument("--before", required=True, help="the older commit (hash or ref)")
    p.add_argument("--after", default="HEAD", help="the newer commit (default HEAD)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES))
    args = p.parse_args()
    commits = {side: subprocess.run(["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True,
                                    check=True).stdout.strip() for side, ref in (("before", args.before),
                                                                                   ("after", args.after))}
    print_machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        srcs = {}
        try:
            for side, commit in commits.items():
                srcs[side] = worktree(commit, Path(tmp) / side) / "src"
                where = imported_from(srcs[side])
                if not where.startswith(str(srcs[side])):
                    raise SystemExit(f"the {side} commit's speedrun is not the one imported ({where}); "
                                     "uninstall a non-editable speedrun or run from a virtual environment")
            for seed in args.seeds:
                for recipe in args.recipes:
                    for side, path in srcs.items():
                        row = run(side, path, recipe, seed, args.data, Path(tmp) / f"{recipe}-{side}-{seed}")
                        rows.append(row)
                        print(f"{recipe:<18} {side:<6} seed {seed}  {row['stopwatch_seconds']:>7.2f} s  "
                              f"steps {row['steps']:>4}  " + "  ".join(f"{k} {row[k]}" for k in DECIDING if k in row),
                              flush=True)
        finally:
            for side in srcs:
                subprocess.run(["git", "worktree", "remove", "--force", str(Path(tmp) / side)], cwd=ROOT,
                               capture_output=True)
    summary = [summarise(f"{recipe} whole command, {side}", [r["stopwatch_seconds"] for r in rows
                                                              if r["recipe"] == recipe and r["side"] == side], unit="s")
               for recipe in args.recipes for side in ("before", "after")]
    pairs = {(r["recipe"], r["seed"]): {} for r in rows}
    for r in rows:
        pairs[(r["recipe"], r["seed"])][r["side"]] = {k: r.get(k) for k in ("steps", *DECIDING)}
    identical = all(pair["before"] == pair["after"] for pair in pairs.values())
    print()
    for row in summary:
        print(summary_line(row))
    print(f"steps and deciding metrics identical on every seed: {'yes' if identical else 'NO'}")
    write_record("before_after", {"before_commit": commits["before"], "after_commit": commits["after"],
                                  "recipes": args.recipes, "runs": rows, "summary": summary,
                                  "identical_metrics": identical},
                 caches="cold", out=args.out, seeds=args.seeds, caches_note=COLD_NOTE)


if __name__ == "__main__":
    main()
