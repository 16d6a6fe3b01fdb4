"""Chat pipeline benchmark (by hand, not in CI).

Runs the default `speedrun chat-pipeline` (every stage, Python's documentation as the
corpus) in a fresh folder, wall-clock timed from the command's start to its end, and
prints each stage's seconds, the total against the 30-minute target, and the held-out
task accuracies before and after fine-tuning against the targets.

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
TARGETS = {"addition": 0.95, "spelling": 0.90, "counting": 0.80, "identity": 1.0}


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
    print(f"{'task':<12} {'before':>8} {'after':>8} {'items':>6}  target")
    for name, result in after.items():
        target = TARGETS.get(name)
        mark = "" if target is None else f">= {target:.0%} " + ("met" if result["accuracy"] >= target else "MISSED")
        print(f"{name:<12} {before[name]['accuracy']:8.1%} {result['accuracy']:8.1%} {result['total']:6d}  {mark}")
    score = json.loads((out / "eval_sft.json").read_text())["score"]
    print(f"score centred on chance: {json.loads((out / 'eval_base.json').read_text())['score']:.3f} before, "
          f"{score:.3f} after")


if __name__ == "__main__":
    main()
