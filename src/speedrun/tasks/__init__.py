"""What the trainer may ask of a task, and the one table of tasks.

A task brings its data and its evaluation; the trainer knows nothing else of it.
Every task subclasses `Task`, and `TASKS` in config.py names each task once,
with the dataclass that validates its `[data]` table and the class that builds it.
"""

from __future__ import annotations

import dataclasses
import importlib

import torch

from ..config import TASKS, Config, ConfigError, ModelConfig
from ..device import Runtime


class Task:
    """The interface between a task and the trainer.

    `name`, `tokenizer` and `block_size` (the longest input the task feeds) are
    set by the subclass. Targets use model.IGNORE_INDEX for positions that do not count.
    """

    name: str
    block_size: int
    tokenizer: object

    @classmethod
    def from_config(cls, cfg: Config) -> "Task":
        """Build the task from a whole config (its `[data]`, the model's context, the seed)."""
        raise NotImplementedError

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (batch_size, block_size), drawn with `generator` only."""
        raise NotImplementedError

    def planned_steps(self, tokens_per_step: int) -> int | None:
        """Steps the task itself asks for (e.g. a number of epochs), or None to leave
        the length to train.steps and train.time_budget."""
        return None

    def evaluate(self, model, rt: Runtime, step: int) -> dict:
        """The periodic evaluation. Keys the trainer reads: `val_loss` (best checkpoint and
        target), `eval` ("full", or "sampled" for an estimate the trainer confirms with
        `full_evaluate` before a target counts), `done` (stop training now), `verified`
        (the task's exhaustive check passed) and `sample` (text for samples.txt)."""
        raise NotImplementedError

    def full_evaluate(self, model, rt: Runtime, step: int) -> dict:
        """The whole validation split at `step`, to confirm a sampled estimate."""
        return self.evaluate(model, rt, step)

    def final_metrics(self, model, rt: Runtime, step: int) -> dict:
        """The evaluation that ends a run and goes into summary.json."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What batches or evaluation depend on beyond the generator (saved in checkpoints)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_task(cfg: Config) -> Task:
    module, name = TASKS[cfg.task].implementation.split(":")
    return getattr(importlib.import_module(module), name).from_config(cfg)


def model_config(cfg: Config, task: Task) -> ModelConfig:
    """The model the task needs: vocab_size 0 takes the tokenizer's size; too small a vocabulary
    or context is a one-line error."""
    vocab = task.tokenizer.vocab_size
    if cfg.model.vocab_size and cfg.model.vocab_size < vocab:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"{vocab}; set it to 0 to take the tokenizer's size")
    if cfg.model.block_size < task.block_size:
        raise ConfigError(f"model.block_size={cfg.model.block_size} is shorter than the task's "
                          f"sequences ({task.block_size}); raise it to at least {task.block_size}")
    return dataclasses.replace(cfg.model, vocab_size=cfg.model.vocab_size or vocab)
