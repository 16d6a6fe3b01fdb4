"""Tasks plug into the trainer by providing data and evaluation.

A task has `name`, `tokenizer`, `block_size` (the longest input it feeds),
`train_batch(batch_size, generator) -> (x, y)` with -100 marking targets that
do not count, `evaluate(model, runtime, step) -> metrics` (a `done` key stops
training early) and `final_metrics(model, runtime, step) -> metrics`.
"""

from __future__ import annotations

from ..config import Config


def build_task(cfg: Config):
    if cfg.task == "addition":
        from .addition import AdditionTask

        return AdditionTask(cfg.data, seed=cfg.train.seed)
    raise ValueError(f"unknown task {cfg.task!r}")
