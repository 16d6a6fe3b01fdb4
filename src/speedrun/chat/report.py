"""report.md for a chat pipeline folder, rebuilt from what the stages left on disk."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from ..report import load_run, plot_learning_curves, summary_table
from ..rundir import git_commit


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def plot_task_accuracy(before: dict | None, after: dict | None, out: Path) -> None:
    from matplotlib.figure import Figure

    tasks = list((after or before)["tasks"])
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.subplots()
    width = 0.4
    for k, (label, result) in enumerate((("base (before)", before), ("fine-tuned (after)", after))):
        if result is None:
            continue
        xs = [i + (k - 0.5) * width for i in range(len(tasks))]
        ax.bar(xs, [result["tasks"][t]["accuracy"] * 100 for t in tasks], width, label=label)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(out, dpi=110)


def task_table(before: dict | None, after: dict | None) -> str:
    tasks = list((after or before)["tasks"])
    lines = ["| task | before fine-tuning | after fine-tuning | items |", "| --- | --- | --- | --- |"]

    def cell(result, task):
        return "-" if result is None else f"{result['tasks'][task]['accuracy']:.1%}"

    for t in tasks:
        n = (after or before)["tasks"][t]["total"]
        lines.append(f"| {t} | {cell(before, t)} | {cell(after, t)} | {n} |")
    score = [("-" if r is None else f"{r['score']:.3f}") for r in (before, after)]
    lines.append(f"| **score** (centred on chance) | {score[0]} | {score[1]} | |")
    return "\n".join(lines)


def examples(result: dict) -> list[str]:
    from .engine import as_plain_text

    lines = []
    for name, task in result["tasks"].items():
        for ex in task["examples"][:2]:
            mark = "right" if ex["correct"] else "wrong"
            lines.append(f"- **{name}** ({mark}): {ex['question']!r} -> {as_plain_text(ex['reply'])!r}")
    return lines


def write_chat_report(out: str | Path, state: dict | None = None) -> Path:
    out = Path(out)
    state = state or _read(out / "pipeline.json") or {"stages": {}}
    stages = state["stages"]
    runs = [load_run(out / name) for name in ("base", "sft") if (out / name / "summary.json").is_file()]
    tok = _read(out / "tokenizer" / "stats.json")
    before, after = _read(out / "eval_base.json"), _read(out / "eval_sft.json")
    summary = runs[0].summary if runs else {}
    lines = ["# Chat pipeline report", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from `{out}`.", "", "## Environment", "",
             f"- hardware: {summary.get('hardware', {}).get('cpu', '-')}"
             f"{' / ' + summary['hardware']['gpu'] if summary.get('hardware', {}).get('gpu') else ''}",
             f"- device/dtype: {summary.get('device', '-')}/{summary.get('dtype', '-')}",
             f"- torch {summary.get('torch_version', '-')}, Python {platform.python_version()}, "
             f"git commit {git_commit() or '-'}", ""]
    total = sum(s.get("seconds", 0.0) for name, s in stages.items() if name != "report")
    lines += ["## Stages", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {name} | {s.get('seconds', 0.0):.1f} |" for name, s in stages.items() if name != "report"]
    lines += [f"| **total** | **{total:.1f}** ({total / 60:.1f} min) |", ""]
    if tok:
        lines += ["## Tokenizer", "", f"- corpus: {tok['corpus']} ({tok['documents']:,} documents, "
                  f"{tok['corpus_bytes'] / 1e6:.2f} MB)",
                  f"- vocabulary: {tok['vocab_size']:,} tokens (BPE, chat special tokens, one token per digit)",
                  f"- compression on held-out text: {tok['val_bytes_per_token']:.2f} bytes per token", ""]
    if runs:
        lines += ["## Training", "", summary_table(runs), ""]
        for run in runs:
            png = out / f"{run.name}_curves.png"
            plot_learning_curves([run], png)
            lines += [f"![{run.name} learning curves]({png.name})", ""]
    if before or after:
        plot_task_accuracy(before, after, out / "task_accuracy.png")
        lines += ["## Tasks (held-out items, greedy, with the calculator)", "", task_table(before, after), "",
                  "![task accuracy](task_accuracy.png)", ""]
        if after:
            lines += ["Examples after fine-tuning:", "", *examples(after), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
