"""Tasks plug into the trainer by providing data and evaluation.

A task has `name`, `tokenizer`, `block_size` (the longest input it feeds),
`train_batch(batch_size, generator) -> (x, y)` with -100 marking targets that
do not count, `evaluate(model, runtime, step) -> metrics` (a `done` key stops
training early; a `sample` key is text saved to samples.txt) and
`final_metrics(model, runtime, step) -> metrics`. A task whose batches depend
on more than the generator (a position in an epoch) has `state_dict()` and
`load_state_dict()`, saved in checkpoints.
"""

from __future__ import annotations

from ..config import Config


def build_task(cfg: Config):
    if cfg.task == "addition":
        from .addition import AdditionTask

        return AdditionTask(cfg.data, seed=cfg.train.seed)
    if cfg.task == "text":
        from .text import TextTask

        return TextTask(cfg.data, block_size=cfg.model.block_size, seed=cfg.train.seed)
    if cfg.task == "chat":
        from .chat import ChatTask

        return ChatTask(cfg.data, block_size=cfg.model.block_size, seed=cfg.train.seed)
    raise ValueError(f"unknown task {cfg.task!r}")
