"""Where a run's metrics go: metrics.jsonl always, TensorBoard and W&B optionally.

`metrics.jsonl` is the record of truth (one JSON object per training log step
or evaluation); `metrics.csv` is derived from it on `close()` for spreadsheets,
and the TensorBoard event files and W&B charts are views of the same records.
The run folder (`RunDir`) owns the files and their formats; this module only
sends each record to every place it goes.
"""

from __future__ import annotations

import importlib.util

from .config import ConfigError
from .rundir import RunDir


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

    def __init__(self, run: RunDir, tensorboard: bool | None = None, wandb_project: str = "",
                 config: dict | None = None):
        self.run = run
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
            self._wandb = wandb.init(project=wandb_project, name=run.path.name, dir=str(run.path),
                                     config=config)

    def log(self, record: dict) -> None:
        self.run.append_metrics(record)
        step = record.get("step")
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tensorboard and self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run.tensorboard_dir))
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
        self.run.write_metrics_csv()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
