"""Where a run's metrics go: metrics.jsonl always, TensorBoard and W&B optionally.

`metrics.jsonl` is the record of truth (one JSON object per training log step
or evaluation); `metrics.csv` is derived from it on `close()` for spreadsheets,
and the TensorBoard event files and W&B charts are views of the same records.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

from .config import ConfigError
from .rundir import RunDir, _finite


class NoLog:
    """What processes other than rank 0 log to."""

    def log(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class MetricsLog:
    """Append metric records for one run; use as a context manager or call `close()`.

    tensorboard=None turns TensorBoard on when the package is installed, so a
    missing optional viewer never stops a run. Its writer opens at the first
    record, so a log that never records starts no thread. wandb is imported only
    when `wandb_project` is set.
    """

    def __init__(self, run_path: Path, tensorboard: bool | None = None, wandb_project: str = "",
                 config: dict | None = None):
        self.path = Path(run_path)
        self.jsonl = self.path / "metrics.jsonl"
        if tensorboard is None:
            tensorboard = importlib.util.find_spec("tensorboard") is not None
        self._tensorboard, self._tb = tensorboard, None
        self._wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise ConfigError(f"logging to Weights & Biases project {wandb_project!r} needs the "
                                  "wandb package: pip install wandb (or pip install 'speedrun[wandb]')") from None
            self._wandb = wandb.init(project=wandb_project, name=self.path.name, dir=str(self.path),
                                     config=config)

    def log(self, record: dict) -> None:
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(_finite(record)) + "\n")
        step = record.get("step")
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tensorboard and self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tensorboard"))
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, global_step=step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        self._tensorboard, self._tb = False, None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        write_csv(self.jsonl, self.path / "metrics.csv")

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_csv(jsonl: Path, out: Path) -> None:
    """One row per JSON line; columns `step` then every other key in first-seen order.

    A record without a key, or with null (a non-finite number), leaves the cell
    empty; nested values (dicts, lists) have no single cell and are left out.
    """
    rows = [{k: v for k, v in record.items() if not isinstance(v, (dict, list))}
            for record in RunDir(jsonl.parent).read_metrics()]
    columns = {"step": None}
    for row in rows:
        columns.update(dict.fromkeys(row))
    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
