"""Chat pipeline benchmark (by hand, not in CI).

Runs the default `speedrun chat-pipeline` (every stage, Python's documentation as the
corpus) in a fresh folder, wall-clock timed from the command's start to its end, and
prints each stage's seconds, the total against the 30-minute target, and the held-out
task accuracies (the constant-answer baseline, the base model few-shot, the fine-tuned
model, arithmetic also without the tool) against the targets. The record
(results/chat.json) holds the pipeline's state and both evaluations; the folder stays.

    python -m benchmarks chat [--workdir DIR] [--out results/chat.json] [key=value ...]

where the overrides are chat-pipeline's (`base.dtype=float32 sft.dtype=float32`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    CHAT_MARGIN_OVER_CONSTANT_POINTS,
    CHAT_PIPELINE_MINUTES,
    CHAT_TASK_ACCURACY,
    parser,
    print_machine,
    write_record,
)
from speedrun.verify_chat import task_verdict


def verdicts(after: dict) -> dict:
    """Per task: the target it has, and its margin over the constant answer, each met or missed
    (None: no target, or a no-tool row, shown and not judged), as `speedrun verify` judges a seed."""
    return {name: {"target": CHAT_TASK_ACCURACY.get(name), **task_verdict(name, r["accuracy"], r["constant"])}
            for name, r in after.items()}


def main() -> None:
    p = parser(__doc__, "chat")
    p.add_argument("--workdir", help="the pipeline's parent folder (default: a new temporary folder); its chat/ "
                   "must not exist")
    args, overrides = p.parse_known_args()
    out = Path(args.workdir or tempfile.mkdtemp(prefix="speedrun-chat-bench-")) / "chat"
    if out.exists():
        sys.exit(f"error: {out} exists; the benchmark times a fresh pipeline, give a new --workdir")
    print_machine()
    cmd = [sys.executable, "-m", "speedrun", "chat-pipeline", "--out", str(out), "--quiet", *overrides]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0

    state = json.loads((out / "pipeline.json").read_text())
    evaluations = {name: json.loads((out / f"{name}.json").read_text()) for name in ("eval_base", "eval_sft")}
    before, after = evaluations["eval_base"]["tasks"], evaluations["eval_sft"]["tasks"]
    print(f"\nfolder: {out}")
    for stage, figures in state["stages"].items():
        print(f"  {stage:<10} {figures['seconds']:7.1f} s")
    met = wall / 60 <= CHAT_PIPELINE_MINUTES
    print(f"total wall-clock {wall / 60:.1f} min (target <= {CHAT_PIPELINE_MINUTES:.0f} min: "
          f"{'met' if met else 'MISSED'})\n")
    print(f"{'task':<20} {'constant':>8} {'before':>8} {'after':>8} {'items':>6}  target; after - constant >= "
          f"{CHAT_MARGIN_OVER_CONSTANT_POINTS} points")
    tasks = verdicts(after)
    for name, result in after.items():
        v = tasks[name]
        mark = "" if v["target"] is None else f">= {v['target']:.0%} " + ("met" if v["target_met"] else "MISSED")
        margin = {True: "met", False: "MISSED", None: "(shown, not judged)"}[v["margin_met"]]
        mark += f"; {v['margin_points']:+.0f} points {margin}"
        print(f"{name:<20} {result['constant']:8.1%} {before[name]['accuracy']:8.1%} {result['accuracy']:8.1%} "
              f"{result['total']:6d}  {mark.lstrip('; ')}")
    print("before: the base model few-shot in plain text; constant: the best constant answer")
    scores = {name: e["score"] for name, e in evaluations.items()}
    print(f"score centred on the constant answer: {scores['eval_base']:.3f} before, {scores['eval_sft']:.3f} after")
    write_record("chat", {"folder": str(out), "overrides": overrides, "wall_seconds": wall,
                          "target_minutes": CHAT_PIPELINE_MINUTES, "target_met": met, "pipeline": state,
                          "evaluations": {name: e["tasks"] for name, e in evaluations.items()}, "scores": scores,
                          "tasks": tasks}, caches="warm", out=args.out,
                 caches_note="a fresh pipeline folder; the user's SPEEDRUN_CACHE and Inductor cache as they are")


if __name__ == "__main__":
    main()
