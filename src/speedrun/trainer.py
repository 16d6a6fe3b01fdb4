"""The training loop, the same for every task.

Every run is timed twice. The headline is wall-clock from process start
(`wall_seconds`, and `time_to_target` / `time_to_verified`): setup, compilation,
evaluation and checkpoints all count, and a time budget is spent on that clock.
Beside it, finer clocks split the same time: `train_seconds` counts only
optimizer steps and the batches they eat; `setup_seconds`, `compile_seconds`,
`eval_seconds` and `checkpoint_seconds` the rest.

A checkpoint holds everything the loop's future depends on (weights,
optimizer state, step, clocks, RNG states, the task's data position), so a
run resumed from it on a CPU continues exactly as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import math
import platform
import signal
import sys
import time
from pathlib import Path

import torch

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .clock import Clock
from .config import Config, ConfigError, config_from_dict, to_dict
from .device import Runtime, cpu_flags, hardware
from .flops import flops_per_token, peak_flops
from .metrics_log import MetricsLog
from .model import GPT
from .optim import build_optimizer, lr_factor, set_lr
from .rundir import RunDir, git_commit
from .tasks import build_task


class Progress:
    """A tqdm bar on a terminal; plain log lines every `log_every` steps otherwise."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, leave=True)

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


class StopSignal:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the end of the step and exits."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(Exception):
    """Training stopped by a signal after writing a checkpoint."""


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint written before it is kept."""


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


def train_step(step_fn, model, optimizer, task, cfg: Config, rt: Runtime, generator,
               d: distributed.Dist = distributed.Dist()) -> tuple[torch.Tensor, bool]:
    """One optimizer step over the global batch of grad_accum micro-batches.

    Every process draws all micro-batches (so the generator and data position
    stay the same everywhere) and trains on every world-th one; DDP averages the
    gradients over processes, so the update equals one process doing all of them.
    Returns the mean loss of this process's micro-batches, and whether the update
    was dropped because the loss was not finite (with train.skip_nonfinite only).
    """
    accum = cfg.train.grad_accum
    mine = [i for i in range(accum) if i % d.world == d.rank]
    total = torch.zeros((), device=rt.device)
    for i in range(accum):
        x, y = task.train_batch(cfg.train.batch_size, generator)
        if i not in mine:
            continue
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        # DDP all-reduces gradients on the last local backward only.
        sync = contextlib.nullcontext() if i == mine[-1] or not d.enabled else step_fn.no_sync()
        with sync, rt.autocast():
            _, loss = step_fn(x, y)
        with sync:
            (loss / len(mine)).backward()
        total += loss.detach()
    skip = cfg.train.skip_nonfinite > 0 and distributed.any_rank(d, not bool(torch.isfinite(total)))
    if not skip:
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / len(mine), skip


def resume_config(run: RunDir) -> Config:
    """The config a run was started with, from its last checkpoint."""
    path = run.checkpoint("last")
    if not path.exists():
        raise ConfigError(f"cannot resume {run.path}: it has no checkpoint (checkpoints/last.safetensors)")
    return config_from_dict(load_checkpoint(path)[1]["config"])


class NoLog:
    """What processes other than rank 0 log to."""

    def log(self, record: dict) -> None:
        pass


# torch.compile's first compile of a shape costs 20-50 s on a 2-core CPU and buys ~1.3x the
# tokens per second, so it pays back only in runs of several minutes.
COMPILE_PAYS_AFTER_SECONDS = 300.0
# The MFU a run of our small models reaches at best, to estimate how long an unbudgeted run takes.
ESTIMATED_MFU = 0.3


class Trainer:
    def __init__(self, cfg: Config, run: RunDir, rt: Runtime, progress: bool = True,
                 dist: distributed.Dist = distributed.Dist(), started: float | None = None):
        # the wall clock starts at process start when the CLI passes it, else now
        self.started = time.perf_counter() if started is None else started
        self.cfg, self.run, self.rt, self.dist = cfg, run, rt, dist
        self.show_progress = progress and dist.is_main
        if cfg.train.grad_accum % dist.world:
            raise ConfigError(f"train.grad_accum={cfg.train.grad_accum} must be a multiple of the "
                              f"{dist.world} processes, so the global batch stays the same")
        torch.manual_seed(cfg.train.seed)
        self.task = build_task(cfg)
        self.model = build_model(cfg, self.task, rt)
        self.optimizer = build_optimizer(self.model, cfg.optim, rt.dtype)
        wrapped = self.model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(self.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        tc = cfg.train
        self.tokens_per_step = tc.batch_size * tc.grad_accum * self.task.block_size
        self.flops_per_token = flops_per_token(self.model, self.task.block_size)
        self.peak_flops = peak_flops(rt.device, rt.dtype)  # measured once per machine, then cached
        self.peak_refreshed = False
        # A time budget lifts the step count (the run lasts the budget); max_steps caps both.
        steps = tc.steps
        if getattr(cfg.data, "epochs", 0) > 0:
            steps = self.task.steps_for_epochs(self.tokens_per_step)
        self.total_steps = tc.max_steps or None if tc.time_budget > 0 else min(steps, tc.max_steps or steps)
        self.compile = self.should_compile()
        self.step_fn = torch.compile(wrapped) if self.compile else wrapped
        self.step = 0
        self.train_clock, self.eval_clock, self.ckpt_clock, self.compile_clock = (Clock(rt.device) for _ in range(4))
        self.wall_before = 0.0  # wall-clock seconds of earlier processes of a resumed run
        self.setup_seconds = 0.0
        self.best_val_loss = float("inf")
        self.time_to_target = None  # wall-clock seconds at the evaluation that first reached the target
        self.train_seconds_to_target = None
        self.time_to_verified = None  # wall-clock seconds when the task's exhaustive check passed
        self.stopped_by = "steps"
        self.skipped_steps = 0
        if dist.is_main:
            (run.path / "tokenizer.json").write_text(self.task.tokenizer.to_json(), encoding="utf-8")

    def wall_seconds(self) -> float:
        """Wall-clock seconds of this run so far, from process start (earlier processes included)."""
        return self.wall_before + time.perf_counter() - self.started

    def should_compile(self) -> bool:
        """train.compile=auto compiles only when the run is expected to last long enough
        for the faster steps to pay back a cold compile: its time budget, or else its
        steps' FLOPs at ESTIMATED_MFU of the measured peak, must reach COMPILE_PAYS_AFTER_SECONDS."""
        setting = self.cfg.train.compile
        if setting != "auto":
            return bool(setting)
        if self.rt.device.type == "mps":
            return False
        if self.cfg.train.time_budget > 0:
            expected = self.cfg.train.time_budget
        else:
            flops = self.total_steps * self.tokens_per_step * self.flops_per_token
            expected = flops / (self.peak_flops * ESTIMATED_MFU)
        return expected >= COMPILE_PAYS_AFTER_SECONDS

    def warm_up_compile(self) -> None:
        """Compile before the first step, on the clock: one forward and backward of a
        training-shaped batch of zeros, its gradients dropped. Timed as compile_seconds,
        which count in wall_seconds and in the time budget, not in train_seconds."""
        x = torch.zeros(self.cfg.train.batch_size, self.task.block_size, dtype=torch.long, device=self.rt.device)
        rng = torch.get_rng_state()
        with self.compile_clock:
            with self.rt.autocast():
                _, loss = self.step_fn(x, x)
            loss.backward()
            self.optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)
        self.say(f"compiled in {self.compile_clock.seconds:.1f}s (train.compile={self.cfg.train.compile})")

    # --- checkpoints ---------------------------------------------------
    def save(self, name: str) -> None:
        if not self.dist.is_main:
            return
        with self.ckpt_clock:
            state = {
                "config": to_dict(self.cfg), "step": self.step, "optimizer": self.optimizer.state_dict(),
                "train_seconds": self.train_clock.seconds, "eval_seconds": self.eval_clock.seconds,
                "checkpoint_seconds": self.ckpt_clock.seconds, "compile_seconds": self.compile_clock.seconds,
                "setup_seconds": self.setup_seconds, "wall_seconds": self.wall_seconds(),
                "best_val_loss": self.best_val_loss, "time_to_target": self.time_to_target,
                "train_seconds_to_target": self.train_seconds_to_target, "time_to_verified": self.time_to_verified,
                "tokenizer": self.task.tokenizer.to_json(),
                "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state()},
                "task": self.task.state_dict() if hasattr(self.task, "state_dict") else {},
            }
            if torch.cuda.is_available():
                state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
            save_checkpoint(self.run.checkpoint(name), self.model.state_dict(), state)

    def resume(self) -> None:
        model_state, state = load_checkpoint(self.run.checkpoint("last"))
        self.load_weights(model_state, "checkpoint")
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.train_clock.seconds = state["train_seconds"]
        self.eval_clock.seconds = state["eval_seconds"]
        self.ckpt_clock.seconds = state["checkpoint_seconds"]
        self.compile_clock.seconds = state.get("compile_seconds", 0.0)
        self.setup_seconds = state.get("setup_seconds", 0.0)
        # this process's own start-up counts again: it is a cost of the interruption
        self.wall_before = state.get("wall_seconds", state["train_seconds"])
        self.best_val_loss = state["best_val_loss"] if state["best_val_loss"] is not None else float("inf")
        self.time_to_target = state["time_to_target"]
        self.train_seconds_to_target = state.get("train_seconds_to_target")
        self.time_to_verified = state.get("time_to_verified")
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if state["task"]:
            self.task.load_state_dict(state["task"])
        if self.dist.is_main:
            self.run.truncate_metrics(self.step)

    def load_initial_weights(self, source: str) -> None:
        """Start from another run's weights (fine-tuning): the model only, not its optimizer or step."""
        path = Path(source)
        if path.is_dir():
            path = RunDir(path).checkpoint("last")
        if not path.is_file():
            raise ConfigError(f"train.init_from={source!r}: no checkpoint there; give a .safetensors "
                              "checkpoint or a run directory that has checkpoints/last.safetensors")
        self.load_weights(load_checkpoint(path)[0], f"train.init_from={source!r}: its checkpoint",
                          "; use the same [model] settings")

    def load_weights(self, model_state: dict, what: str, fix: str = "") -> None:
        try:
            self.model.load_state_dict(model_state)
        except RuntimeError as e:
            raise ConfigError(f"{what} does not match the model in the config ({str(e).splitlines()[0]}){fix}") from None

    def mfu(self, tokens_per_second: float) -> float:
        """Model FLOPs utilisation against the measured matmul peak of the dtype the
        matmuls run in. Over 100% means the cached peak was measured on a busy machine:
        it is measured again, once, rather than printed."""
        value = tokens_per_second * self.flops_per_token / self.peak_flops
        if value > 1 and not self.peak_refreshed:
            self.say(f"MFU would be {value:.0%} of the cached {self.peak_flops / 1e9:,.0f} GFLOP/s "
                     f"{self.rt.dtype_name} peak: the cache is stale, measuring the peak again")
            self.peak_flops = peak_flops(self.rt.device, self.rt.dtype, refresh=True)
            self.peak_refreshed = True
            value = tokens_per_second * self.flops_per_token / self.peak_flops
        return value

    # --- the loop ------------------------------------------------------
    def say(self, line: str) -> None:
        if self.dist.is_main:
            self.bar.write(line)
            self.run.log(line)

    def evaluate(self) -> dict:
        with self.eval_clock:
            metrics = self.task.evaluate(self.model, self.rt, self.step)
        self.record_eval(metrics)
        return metrics

    def record_eval(self, metrics: dict, final: bool = False) -> None:
        """Log an evaluation; keep the best checkpoint; note the target and early stops."""
        sample = metrics.pop("sample", None)
        if sample is not None:
            with open(self.run.path / "samples.txt", "a", encoding="utf-8") as f:
                f.write(f"--- step {self.step}{' (final)' if final else ''} ---\n{sample}\n")
        self.metrics.log({"step": self.step, "train_seconds": self.train_clock.seconds,
                          "tokens": self.step * self.tokens_per_step, **metrics})
        self.say(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                  if isinstance(v, float)))
        target = self.cfg.train.target_val_loss
        val = metrics.get("val_loss")
        full = metrics.get("eval", "full") == "full"
        if val is not None and full and val < self.best_val_loss:
            self.best_val_loss = val
            self.save("best")
        if metrics.get("verified") and self.time_to_verified is None:
            self.time_to_verified = self.wall_seconds()
        if target > 0 and val is not None and val <= target and self.time_to_target is None:
            if full:
                self.time_to_target = self.wall_seconds()
                self.train_seconds_to_target = self.train_clock.seconds
                if not final and self.cfg.train.stop_at_target:
                    self.stopped_by = "target"
            else:  # a sampled estimate reached it: confirm on the whole split
                with self.eval_clock:
                    confirm = self.task.full_eval(self.model, self.rt)
                self.record_eval(confirm, final)
        if metrics.get("done"):
            self.stopped_by = "task_done"

    def diverged(self, what: str) -> None:
        message = (f"{what}: training diverged; lower optim.lr or raise optim.warmup_steps "
                   f"(checkpoints from before step {self.step} are kept)")
        self.say(message)
        raise Diverged(message)

    def progress(self) -> float:
        """How far along the schedule is: by steps, by the time budget, whichever is further,
        so a run anneals before it stops, whichever stops it."""
        warmup = self.cfg.optim.warmup_steps
        # the step about to be taken is number step + 1: the last one runs at the schedule's end
        by_steps = (self.step + 1 - warmup) / max(1, self.total_steps - warmup) if self.total_steps else 0.0
        budget = self.cfg.train.time_budget
        if budget <= 0:
            return by_steps
        # over the part of the budget left when training began (setup and compile spent the rest)
        begun = self.setup_seconds + self.compile_clock.seconds
        return max(by_steps, (self.wall_seconds() - begun) / max(budget - begun, 1e-9))

    def run_loop(self) -> None:
        cfg, tc = self.cfg, self.cfg.train
        while self.total_steps is None or self.step < self.total_steps:
            lr_scale = lr_factor(cfg.optim, self.step, self.progress())
            with self.train_clock:
                set_lr(self.optimizer, lr_scale)
                loss, skipped = train_step(self.step_fn, self.model, self.optimizer, self.task, cfg, self.rt,
                                           self.generator, self.dist)
            self.step += 1
            if skipped:
                self.skipped_steps += 1
                self.say(f"step {self.step}: loss is {loss.item()}, update skipped "
                         f"({self.skipped_steps} of train.skip_nonfinite={tc.skip_nonfinite})")
                self.metrics.log({"step": self.step, "skipped_nonfinite": self.skipped_steps})
                if self.skipped_steps > tc.skip_nonfinite:
                    self.diverged(f"loss was not finite at {self.skipped_steps} steps, the last at step {self.step}")
            log_now = self.step % tc.log_every == 0 or self.step == self.total_steps
            if log_now or self.bar.bar is not None:
                # the mean over all processes at logged steps (every process takes part)
                loss_value = distributed.mean(self.dist, loss.item()) if log_now else loss.item()
                tps = self.step * self.tokens_per_step / max(self.train_clock.seconds, 1e-9)
                # checked at every logged step (and every step a progress bar shows, alone)
                if not math.isfinite(loss_value) and not skipped and (log_now or not self.dist.enabled):
                    self.diverged(f"loss is {loss_value} at step {self.step}")
                self.bar.update(self.step, f"loss {loss_value:.4f}, {tps:,.0f} tok/s", log_now)
            if log_now:
                self.metrics.log({"step": self.step, "loss": loss_value, "lr_scale": lr_scale,
                                  "train_seconds": self.train_clock.seconds,
                                  "tokens": self.step * self.tokens_per_step, "tokens_per_second": tps,
                                  "mfu": self.mfu(tps)})
                if self.dist.is_main:
                    self.run.log(f"step {self.step} loss {loss_value:.4f} {tps:,.0f} tok/s")
            if tc.time_budget > 0 and self.wall_seconds() >= tc.time_budget:
                self.stopped_by = "time_budget"
            if tc.eval_every and self.step % tc.eval_every == 0 and self.step != self.total_steps \
                    and self.stopped_by == "steps":
                if self.dist.is_main:
                    self.evaluate()
                self.save("last")
            # Every process stops at the same step: a signal or a stop reason anywhere stops all.
            interrupted, stopping = distributed.any_rank(self.dist, self.stop.received is not None,
                                                         self.stopped_by != "steps")
            if interrupted:
                self.save("last")
                raise Interrupted(self.stop.received or "a signal to another process")
            if stopping:
                self.stopped_by = distributed.share(self.dist, self.stopped_by)
                break

    def train(self, resume: bool = False) -> dict:
        if resume:
            self.resume()
        elif self.cfg.train.init_from:
            self.load_initial_weights(self.cfg.train.init_from)
        self.bar = Progress(self.total_steps, self.step, self.show_progress)
        verb = "resuming at step " + str(self.step) if resume else "training"
        self.say(f"speedrun {self.cfg.recipe or self.cfg.task}: {verb}, {self.model.num_params():,} parameters "
                 f"on {self.rt.device} ({self.rt.dtype_name}{', compiled' if self.compile else ''})")
        self.setup_seconds += time.perf_counter() - self.started
        if self.compile:
            self.warm_up_compile()
        tc = self.cfg.train
        if not self.dist.is_main:
            self.metrics = NoLog()
            with StopSignal() as self.stop:
                self.run_loop()
            return {}
        with MetricsLog(self.run.path, None if tc.tensorboard else False, tc.wandb_project,
                        to_dict(self.cfg)) as self.metrics:
            try:
                with StopSignal() as self.stop:
                    self.run_loop()
            except Interrupted as e:
                self.say(f"stopped by {e} at step {self.step}; checkpoint written. "
                         f"Resume with: speedrun train --resume {self.run.path}")
                raise
            finally:
                self.bar.close()
            self.save("last")
            with self.eval_clock:
                final = self.task.final_metrics(self.model, self.rt, self.step)
            self.record_eval(final, final=True)
            return self.write_summary(final)

    def write_summary(self, final: dict) -> dict:
        cfg = self.cfg
        tps = self.step * self.tokens_per_step / max(self.train_clock.seconds, 1e-9)
        summary = {
            "recipe": cfg.recipe, "task": cfg.task, "seed": cfg.train.seed, "steps": self.step,
            "stopped_by": self.stopped_by, "params": self.model.num_params(),
            "train_seconds": self.train_clock.seconds, "eval_seconds": self.eval_clock.seconds,
            "checkpoint_seconds": self.ckpt_clock.seconds, "compile_seconds": self.compile_clock.seconds,
            "setup_seconds": self.setup_seconds, "compiled": self.compile,
            "tokens": self.step * self.tokens_per_step,
            "tokens_per_second": tps,
            "flops_per_token": self.flops_per_token, "peak_flops": self.peak_flops, "mfu": self.mfu(tps),
            "device": str(self.rt.device), "dtype": self.rt.dtype_name,
            "hardware": {**hardware(), "cpu_flags": cpu_flags()},
            "torch_version": torch.__version__,
            "python_version": platform.python_version(), "git_commit": git_commit(),
            "metrics": final,
        }
        if "val_loss" in final:
            summary["metrics"]["best_val_loss"] = self.best_val_loss
            summary["target_val_loss"] = cfg.train.target_val_loss or None
            summary["time_to_target"] = self.time_to_target
            summary["train_seconds_to_target"] = self.train_seconds_to_target
        if "exact_match" in final:
            summary["time_to_verified"] = self.time_to_verified
        summary["wall_seconds"] = self.wall_seconds()  # last, so that it covers everything before it
        self.run.write_json("summary.json", summary)
        self.say(f"done in {summary['wall_seconds']:.1f}s of wall-clock: {self.step} steps in "
                 f"{self.train_clock.seconds:.1f}s of training "
                 f"({tps:,.0f} tokens/s, MFU {summary['mfu']:.1%} of a measured "
                 f"{self.peak_flops / 1e9:,.0f} GFLOP/s {self.rt.dtype_name} peak), "
                 f"{self.eval_clock.seconds:.1f}s of evaluation; " +
                 ", ".join(f"{k} {v:.4f}" for k, v in final.items() if isinstance(v, float)))
        return summary


def train(cfg: Config, run: RunDir, rt: Runtime, progress: bool = True, resume: bool = False,
          dist: distributed.Dist = distributed.Dist(), started: float | None = None) -> dict:
    return Trainer(cfg, run, rt, progress, dist, started).train(resume=resume)
