"""The one loader of a trained model, whatever folder it lives in: a run directory, a chat
pipeline's folder (its fine-tuned model, or the base model before fine-tuning finished) or a
`speedrun export` folder. `speedrun sample`, `chat`, `serve`, the chat pipeline's evaluation
and the benchmarks all load through it; each format keeps its own reader (`rundir` for a run,
`export` for an export), and this module only decides which one a folder needs."""

from __future__ import annotations

from pathlib import Path

from .chat.engine import Engine, chat_run_dir
from .export import is_export, load_export
from .run import runtime_for
from .rundir import load_run_model


def load_model(path, device: str = "cpu"):
    """(model, tokenizer, config, runtime), the model on the runtime's device in eval mode; the
    runtime is resolved as a run resolves it (`run.runtime_for`), an export's in fp32, as it
    was written."""
    reader = load_export if is_export(path) else lambda p: load_run_model(str(chat_run_dir(Path(p))))
    model, tok, cfg = reader(path)
    rt = runtime_for(cfg, device)
    return model.to(rt.device), tok, cfg, rt


def load_engine(path, device: str = "cpu") -> Engine:
    """The chat engine of the model in `path`. On a CPU it generates in fp32 even for a model
    trained in bf16: one token at a time, autocast's casts cost more than they save (about 3x
    slower per token, measured at 4 x 256)."""
    model, tok, _, rt = load_model(path, device)
    return Engine(model, tok, rt.generation_autocast)
