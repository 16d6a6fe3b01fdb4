"""Chat pipeline benchmark (by hand, not in CI).

Runs the default `speedrun chat-pipeline` (every stage, Python's documentation as the
corpus) in a fresh folder, wall-clock timed from the command's start to its end, and
prints each stage's seconds, the total against the 30-minute target, and the held-out
task accuracies (the constant-answer baseline, the base model few-shot, the fine-tuned
model, arithmetic also without the tool) against the targets.

    python benchmarks/chat.py [--out DIR] [key=value ...]   # overrides as for chat-pipeline
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MINUTES = 30.0
TARGETS = {"addition": 0.95, "spelling": 0.90, "counting": 0.80}
MARGIN_POINTS = 30  # every task must beat its constant-answer baseline by this many points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="pipeline folder (default: a new temporary folder); must not exist")
    args, overrides = parser.parse_known_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="speedrun-chat-bench-")) / "chat"
    if out.exists():
        sys.exit(f"error: {out} exists; the benchmark times a fresh pipeline, give a new --out")
    cmd = [sys.executable, "-m", "speedrun", "chat-pipeline", "--out", str(out), "--quiet", *overrides]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0

    state = json.loads((out / "pipeline.json").read_text())
    before = json.loads((out / "eval_base.json").read_text())["tasks"]
    after = json.loads((out / "eval_sft.json").read_text())["tasks"]
    print(f"\nfolder: {out}")
    for stage, figures in state["stages"].items():
        print(f"  {stage:<10} {figures['seconds']:7.1f} s")
    verdict = "met" if wall / 60 <= TARGET_MINUTES else "MISSED"
    print(f"total wall-clock {wall / 60:.1f} min (target <= {TARGET_MINUTES:.0f} min: {verdict})\n")
    print(f"{'task':<20} {'constant':>8} {'before':>8} {'after':>8} {'items':>6}  target; after - constant >= "
          f"{MARGIN_POINTS} points")
    for name, result in after.items():
        target = TARGETS.get(name)
        mark = "" if target is None else f">= {target:.0%} " + ("met" if result["accuracy"] >= target else "MISSED")
        margin = (result["accuracy"] - result["constant"]) * 100
        mark += f"; {margin:+.0f} points " + ("met" if margin >= MARGIN_POINTS else "MISSED")
        print(f"{name:<20} {result['constant']:8.1%} {before[name]['accuracy']:8.1%} {result['accuracy']:8.1%} "
              f"{result['total']:6d}  {mark.lstrip('; ')}")
    print("before: the base model few-shot in plain text; constant: the best constant answer")
    score = json.loads((out / "eval_sft.json").read_text())["score"]
    print(f"score centred on the constant answer: {json.loads((out / 'eval_base.json').read_text())['score']:.3f} "
          f"before, {score:.3f} after")

if __name__ == "__main__":
    main()
