"""report.md for a chat pipeline folder, rebuilt from what the stages left on disk."""

from __future__ import annotations

import platform
import time
from pathlib import Path

from ..report import load_run, plot_learning_curves, summary_table
from ..rundir import ChatRunDir, git_commit


def row_label(row: str) -> str:
    """A result row as the table names it: arithmetic with the calculator, or without it."""
    if row.endswith("_no_tool"):
        return f"{row.removesuffix('_no_tool')} (no tool)"
    return f"{row} (calculator)" if row in ("addition", "subtraction") else row


def _rows(before: dict | None, after: dict | None) -> list[str]:
    return list((after or before)["tasks"])


def plot_task_accuracy(before: dict | None, after: dict | None, out: Path) -> None:
    from matplotlib.figure import Figure

    rows = _rows(before, after)
    either = after or before
    bars = [("constant answer", {r: either["tasks"][r]["constant"] for r in rows}),
            ("base model, few-shot", None if before is None else {r: before["tasks"][r]["accuracy"] for r in rows}),
            ("fine-tuned", None if after is None else {r: after["tasks"][r]["accuracy"] for r in rows})]
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.27
    for k, (label, values) in enumerate(bars):
        if values is not None:
            ax.bar([i + (k - 1) * width for i in range(len(rows))], [values[r] * 100 for r in rows], width,
                   label=label)
    ax.set_xticks(range(len(rows)), [row_label(r).replace(" (", "\n(") for r in rows], fontsize=8)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(out, dpi=110)


def task_table(before: dict | None, after: dict | None) -> str:
    """Each task beside its baselines: the best constant answer and the base model prompted
    few-shot in plain text; the score is centred on the constant answer."""
    either = after or before
    lines = ["| task | items | constant answer | base model, few-shot (before) | fine-tuned (after) |",
             "| --- | ---: | ---: | ---: | ---: |"]

    def cell(result, row):
        return "-" if result is None else f"{result['tasks'][row]['accuracy']:.1%}"

    for row in _rows(before, after):
        r = either["tasks"][row]
        lines.append(f"| {row_label(row)} | {r['total']} | {r['constant']:.1%} | {cell(before, row)} | "
                     f"{cell(after, row)} |")
    score = [("-" if r is None else f"{r['score']:.3f}") for r in (before, after)]
    lines.append(f"| **score** (centred on the constant answer) | | 0 | {score[0]} | {score[1]} |")
    return "\n".join(lines)


def examples(result: dict) -> list[str]:
    from ..chat.engine import as_plain_text

    lines = []
    for name, task in result["tasks"].items():
        for ex in task["examples"][:2]:
            mark = "right" if ex["correct"] else "wrong"
            lines.append(f"- **{row_label(name)}** ({mark}): {ex['question']!r} -> {as_plain_text(ex['reply'])!r}")
    return lines


def write_chat_report(out: str | Path, state: dict | None = None) -> Path:
    folder = ChatRunDir(out)
    out = folder.path
    state = state or folder.read_state() or {"stages": {}}
    stages = state["stages"]
    runs = [load_run(run.path) for run in folder.finished_runs()]
    tok = folder.read_tokenizer_stats()
    before, after = folder.read_eval(ChatRunDir.BASE), folder.read_eval(ChatRunDir.SFT)
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
        counted = (f" ({tok['documents']:,} documents after dropping {tok.get('duplicates_dropped', 0):,} exact "
                   f"duplicates, {tok['corpus_bytes'] / 1e6:.2f} MB)" if "documents" in tok
                   else " (streamed: the base stage's prepared dataset counts its documents)")
        lines += ["## Tokenizer", "", f"- corpus: {tok['corpus']}{counted}",
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
        lines += ["## Tasks (held-out test items, greedy)", "",
                  "The fine-tuned model answers in the chat template, with the calculator, and arithmetic again "
                  "with the tool disabled. The base model is prompted few-shot in plain text (it never saw the "
                  "chat tokens, and has no tool). The constant answer is the best score of one fixed reply given "
                  "to every question. The score centres each task on it and averages over the tasks (not the "
                  "no-tool rows).", "", task_table(before, after), "", "![task accuracy](task_accuracy.png)", ""]
        if after:
            lines += ["Examples after fine-tuning:", "", *examples(after), ""]
    folder.report_file.write_text("\n".join(lines), encoding="utf-8")
    return folder.report_file
