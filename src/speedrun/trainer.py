"""The training loop, the same for every task.

The clock (`train_seconds`) counts only optimizer steps and the batches they
eat; evaluation and checkpointing are timed separately, so a run's speed is
not flattered or penalised by how often it is checked.
"""

from __future__ import annotations

import platform
import sys
import time

import torch

from .checkpoint import save_checkpoint
from .config import Config, ConfigError, to_dict
from .device import Runtime
from .model import GPT
from .optim import build_optimizer, lr_factor, set_lr
from .rundir import RunDir, git_commit
from .tasks import build_task


class Clock:
    """Wall-clock seconds of one kind of work, synchronising CUDA before reading."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self._t0 = device, 0.0, None

    def __enter__(self):
        self._sync()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.seconds += time.perf_counter() - self._t0

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class Progress:
    """A tqdm bar on a terminal; plain log lines every `log_every` steps otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, leave=True)

    def update(self, step: int, text: str, log_line: bool) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(text, refresh=True)
        elif log_line:
            print(f"step {step}: {text}", flush=True)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def build_model(cfg: Config, task, rt: Runtime) -> GPT:
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = task.tokenizer.vocab_size
    elif cfg.model.vocab_size < task.tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"{task.tokenizer.vocab_size}; set it to 0 to take the tokenizer's size")
    if cfg.model.block_size < task.block_size:
        raise ConfigError(f"model.block_size={cfg.model.block_size} is shorter than the task's "
                          f"sequences ({task.block_size}); raise it to at least {task.block_size}")
    return GPT(cfg.model).to(rt.device)


def train_step(step_fn, model, optimizer, task, cfg: Config, rt: Runtime, generator) -> torch.Tensor:
    """One optimizer step over grad_accum micro-batches; returns the last micro-batch's loss."""
    for _ in range(cfg.train.grad_accum):
        x, y = task.train_batch(cfg.train.batch_size, generator)
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        with rt.autocast():
            _, loss = step_fn(x, y)
        (loss / cfg.train.grad_accum).backward()
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def train(cfg: Config, run: RunDir, rt: Runtime, progress: bool = True) -> dict:
    torch.manual_seed(cfg.train.seed)
    task = build_task(cfg)
    model = build_model(cfg, task, rt)
    (run.path / "tokenizer.json").write_text(task.tokenizer.to_json(), encoding="utf-8")
    optimizer = build_optimizer(model, cfg.optim)
    step_fn = torch.compile(model) if cfg.train.compile else model
    generator = torch.Generator().manual_seed(cfg.train.seed)
    tc = cfg.train
    train_clock, eval_clock, ckpt_clock = Clock(rt.device), Clock(rt.device), Clock(rt.device)
    tokens_per_step = tc.batch_size * tc.grad_accum * task.block_size
    bar = Progress(tc.steps, progress)

    def say(line: str) -> None:
        bar.write(line)
        run.log(line)

    say(f"speedrun {cfg.recipe or cfg.task}: {model.num_params():,} parameters on {rt.device} ({rt.dtype_name})")
    step, eval_metrics, stopped_by = 0, {}, "steps"
    while step < tc.steps:
        if tc.time_budget > 0:
            done_fraction = train_clock.seconds / tc.time_budget
        else:
            done_fraction = (step - cfg.optim.warmup_steps) / max(1, tc.steps - cfg.optim.warmup_steps)
        lr_scale = lr_factor(cfg.optim, step, done_fraction)
        with train_clock:
            set_lr(optimizer, lr_scale)
            loss = train_step(step_fn, model, optimizer, task, cfg, rt, generator)
        step += 1
        log_now = step % tc.log_every == 0 or step == tc.steps
        if log_now:
            loss_value = loss.item()
            record = {"step": step, "loss": loss_value, "lr_scale": lr_scale,
                      "train_seconds": train_clock.seconds,
                      "tokens_per_second": step * tokens_per_step / max(train_clock.seconds, 1e-9)}
            run.log_metrics(record)
            run.log(f"step {step} loss {loss_value:.4f} {record['tokens_per_second']:,.0f} tok/s")
        if log_now or bar.bar is not None:
            bar.update(step, f"loss {loss.item():.4f}, {step * tokens_per_step / max(train_clock.seconds, 1e-9):,.0f} tok/s", log_now)
        if tc.time_budget > 0 and train_clock.seconds >= tc.time_budget:
            stopped_by = "time_budget"
        if tc.eval_every and step % tc.eval_every == 0 and step < tc.steps:
            with eval_clock:
                eval_metrics = task.evaluate(model, rt, step)
            run.log_metrics({"step": step, "train_seconds": train_clock.seconds, **eval_metrics})
            say(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()
                                             if isinstance(v, float)))
            if eval_metrics.get("done"):
                stopped_by = "task_done"
        if stopped_by != "steps":
            break
    bar.close()

    with ckpt_clock:
        save_checkpoint(run.checkpoint("last"), model.state_dict(),
                        {"config": to_dict(cfg), "step": step, "tokenizer": task.tokenizer.to_json()})
    with eval_clock:
        final = task.final_metrics(model, rt, step)
    summary = {
        "recipe": cfg.recipe, "task": cfg.task, "seed": tc.seed, "steps": step, "stopped_by": stopped_by,
        "params": model.num_params(), "train_seconds": train_clock.seconds,
        "eval_seconds": eval_clock.seconds, "checkpoint_seconds": ckpt_clock.seconds,
        "tokens_per_second": step * tokens_per_step / max(train_clock.seconds, 1e-9),
        "device": str(rt.device), "dtype": rt.dtype_name, "torch_version": torch.__version__,
        "python_version": platform.python_version(), "git_commit": git_commit(),
        "metrics": final,
    }
    run.write_json("summary.json", summary)
    say(f"done: {step} steps in {train_clock.seconds:.1f}s of training, "
        f"{eval_clock.seconds:.1f}s of evaluation; " +
        ", ".join(f"{k} {v:.4f}" for k, v in final.items() if isinstance(v, float)))
    return summary
