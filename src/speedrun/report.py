"""Reports on finished runs: learning curves, a summary table, leaderboard submissions.

Everything here reads run directories (`config.toml`, `metrics.jsonl`,
`summary.json`) and nothing else, so a report can be made long after a run,
on another machine, and for runs of any task. Runs without a validation
curve (no `val_loss` in metrics.jsonl) still get a table row and a
submission; they are just absent from the plots, and the report says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .config import Config, ConfigError, load_config, recipe_names, to_dict
from .device import hardware
from .rundir import RunDir, _finite

# Keys that name or describe a recipe rather than change what it trains.
NOT_SETTINGS = {"recipe", "description"}


class ReportError(ConfigError):
    """A path that is not a finished run directory, or one that cannot be read.

    A ConfigError, so the CLI reports it as a user mistake (one line, exit 2).
    """


@dataclass
class Run:
    path: Path
    config: Config
    summary: dict
    records: list[dict]

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def recipe(self) -> str:
        return self.summary.get("recipe") or self.config.recipe

    @property
    def val_curve(self) -> list[dict]:
        """The evaluation records that measured val_loss, in logged order."""
        return [r for r in self.records if r.get("val_loss") is not None]

    @property
    def target_val_loss(self) -> float | None:
        target = self.summary.get("target_val_loss") or self.config.train.target_val_loss
        return target if target and target > 0 else None

    def final(self, key: str):
        """A final metric from summary.json, else its last value in metrics.jsonl."""
        value = self.summary.get("metrics", {}).get(key)
        if value is None:
            value = next((r[key] for r in reversed(self.records) if r.get(key) is not None), None)
        return value


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.is_dir():
        reason = "it is not a folder" if path.exists() else "no such folder"
        raise ReportError(f"{path} is not a run directory: {reason}; pass the folder `speedrun train` printed")
    run = RunDir(path)
    missing = [f.name for f in (run.summary_file, run.config_file) if not f.is_file()]
    if missing:
        raise ReportError(f"{path} is not a finished run directory: expected {' and '.join(missing)} in it "
                          "(`speedrun train` writes summary.json when a run ends)")
    try:
        summary = run.read_summary()
    except json.JSONDecodeError as e:
        raise ReportError(f"{run.summary_file} is not valid JSON: {e}") from None
    try:
        config = load_config(str(run.config_file))
    except ConfigError as e:
        raise ReportError(f"{run.config_file}: {e}") from None
    try:
        records = run.read_metrics()
    except ValueError as e:
        raise ReportError(str(e)) from None
    return Run(path, config, summary, records)


# Learning curves ----------------------------------------------------------------------------

PANELS = [("train_seconds", "training wall-clock seconds"), ("tokens", "tokens seen")]  # (x key, x label)


def plot_learning_curves(runs: list[Run], out: Path) -> list[str]:
    """Write val_loss against training seconds and against tokens to `out` (PNG).

    Returns notes on what could not be plotted. Uses a bare Figure (the Agg
    canvas), not pyplot, so it changes no global backend state.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    notes = []
    for i, run in enumerate(runs):
        curve = run.val_curve
        if not curve:
            notes.append(f"{run.name}: no val_loss in metrics.jsonl, nothing plotted")
            continue
        color, label = f"C{i % 10}", f"{run.name} ({run.recipe})"
        for ax, (xkey, _) in zip(axes, PANELS):
            points = [(r[xkey], r["val_loss"]) for r in curve if r.get(xkey) is not None]
            if not points:
                notes.append(f"{run.name}: its evaluation records have no {xkey}, absent from that panel")
                continue
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, color=color, label=label)
            if run.target_val_loss:
                ax.axhline(run.target_val_loss, color=color, linestyle="--", linewidth=1,
                           label=f"{run.name} target_val_loss")
    for ax, (_, xlabel) in zip(axes, PANELS):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val_loss")
        ax.set_title(f"val_loss against {xlabel}", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no validation curve recorded", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(out, dpi=110)
    return notes


# Summary table ------------------------------------------------------------------------------

def summary_table(runs: list[Run]) -> str:
    """A Markdown table with one row per run: wall-clock first (the headline), training time beside
    it; exact_match and time_to_verified columns when a run has them."""
    columns = ["run", "recipe", "params", "steps", "wall_seconds", "train_seconds", "val_loss", "val_bpb",
               "time_to_target", "tokens_per_second", "device/dtype"]
    show_exact = any(run.final("exact_match") is not None for run in runs)
    if show_exact:
        columns[8:8] = ["exact_match", "time_to_verified"]
    rows = []
    for run in runs:
        s = run.summary
        row = {
            "run": run.name, "recipe": run.recipe, "params": _fmt(s.get("params"), ","),
            "steps": _fmt(s.get("steps"), "d"), "wall_seconds": _fmt(s.get("wall_seconds"), ".1f"),
            "train_seconds": _fmt(s.get("train_seconds"), ".1f"),
            "time_to_verified": _fmt(s.get("time_to_verified"), ".1f"),
            "val_loss": _fmt(run.final("val_loss"), ".4f"), "val_bpb": _fmt(run.final("val_bpb"), ".4f"),
            "exact_match": _fmt(run.final("exact_match"), ".6f"),
            "time_to_target": _fmt(s.get("time_to_target"), ".1f"),
            "tokens_per_second": _fmt(s.get("tokens_per_second"), ",.0f"),
            "device/dtype": f"{s.get('device', '-')}/{s.get('dtype', '-')}",
        }
        rows.append("| " + " | ".join(row[c] for c in columns) + " |")
    header = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return "\n".join(header + rows)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# Submission folder --------------------------------------------------------------------------

def config_diff(baseline: Config, run: Config) -> list[str]:
    """`key: baseline -> run` for every setting that differs, values in TOML syntax."""
    base, mine = _flatten(to_dict(baseline)), _flatten(to_dict(run))
    lines = []
    for key in dict.fromkeys([*base, *mine]):
        differs = key not in base or key not in mine or base[key] != mine[key]
        if differs and key not in NOT_SETTINGS:
            lines.append(f"{key}: {_toml_value(base, key)} -> {_toml_value(mine, key)}")
    return lines


def _flatten(table: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _toml_value(flat: dict, key: str) -> str:
    # JSON writes strings, numbers and booleans exactly as TOML does.
    return json.dumps(flat[key]) if key in flat else "(not set)"


def description(run: Run, baseline: str | None) -> str:
    """Plain text: what this run changes relative to a bundled baseline recipe."""
    if baseline is None and run.recipe in recipe_names():
        baseline = run.recipe
    head = [f"Run {run.name}: recipe {run.recipe}, seed {run.summary.get('seed', run.config.train.seed)}."]
    if run.config.description:
        head.append(f"Recipe description: {run.config.description}")
    if baseline is None:
        return "\n".join(head + [f"No baseline: {run.recipe!r} is not a bundled recipe; "
                                 "pass --baseline RECIPE to compare with one."]) + "\n"
    diff = config_diff(load_config(baseline), run.config)
    body = ([f"Differences from the baseline recipe {baseline} (key: baseline -> run):", *diff] if diff
            else [f"Config identical to the baseline recipe {baseline}."])
    return "\n".join(head + [""] + body) + "\n"


def submission(run: Run) -> dict:
    """final_submission.json: outcome, time, full config and where it ran.

    Hardware comes from summary.json when the trainer recorded it, otherwise
    from the machine making the report.
    """
    s = run.summary
    return {
        "run": run.name, "recipe": run.recipe, "task": s.get("task", run.config.task), "seed": s.get("seed"),
        "steps": s.get("steps"), "params": s.get("params"), "tokens": s.get("tokens"),
        "metrics": s.get("metrics", {}),
        "time": {**{k: s.get(k) for k in ("wall_seconds", "train_seconds", "eval_seconds", "checkpoint_seconds",
                                           "compile_seconds", "setup_seconds", "time_to_target",
                                           "train_seconds_to_target", "time_to_verified", "tokens_per_second")},
                 "target_val_loss": run.target_val_loss},
        "config": to_dict(run.config),
        "hardware": {**(s.get("hardware") or hardware()), "device": s.get("device"), "dtype": s.get("dtype")},
        "software": {"torch_version": s.get("torch_version"), "python_version": s.get("python_version"),
                     "git_commit": s.get("git_commit")},
    }


def write_submission(run: Run, baseline: str | None = None) -> Path:
    folder = RunDir(run.path).submission_dir
    folder.mkdir(exist_ok=True)
    plot_learning_curves([run], folder / "learning_curves.png")
    (folder / "final_submission.json").write_text(json.dumps(_finite(submission(run)), indent=2) + "\n",
                                                  encoding="utf-8")
    (folder / "description.txt").write_text(description(run, baseline), encoding="utf-8")
    return folder


# The whole report ---------------------------------------------------------------------------

def write_report(run_dirs: list[str | Path], out: str | Path | None = None, baseline: str | None = None) -> str:
    """Curves and table for all runs in `out` (default: the first run's directory), a
    submission folder in each run; returns the report's Markdown."""
    runs = [load_run(p) for p in run_dirs]
    if baseline is not None:
        load_config(baseline)  # a bad --baseline fails before anything is written
    out = Path(out) if out is not None else runs[0].path
    out.mkdir(parents=True, exist_ok=True)
    notes = plot_learning_curves(runs, out / "learning_curves.png")
    for run in runs:
        write_submission(run, baseline)
    parts = ["# Runs", summary_table(runs)]
    if notes:
        parts.append("\n".join(f"- {note}" for note in notes))
    parts.append("![learning curves](learning_curves.png)")
    text = "\n\n".join(parts) + "\n"
    (out / "report.md").write_text(text, encoding="utf-8")
    return text
