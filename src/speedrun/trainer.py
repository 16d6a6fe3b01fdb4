"""The training loop, the same for every task.

`Trainer.train` is the loop, read top to bottom: schedule, step, log, evaluate,
checkpoint, stop. Everything it uses is made in `Trainer.__init__`.

Every run is timed twice. The headline is wall-clock from process start
(`wall_seconds`, `time_to_target`, `time_to_verified`): setup, compilation,
evaluation and checkpoints all count, and a time budget is spent on that clock.
Finer clocks split the same time: `train_seconds` (optimizer steps only),
`setup_seconds`, `compile_seconds`, `eval_seconds`, `checkpoint_seconds`.

A checkpoint holds everything the loop's future depends on, so a run resumed
from it on a CPU continues exactly as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from pathlib import Path

import torch

from . import distributed
from .checkpoint import load_checkpoint
from .clock import Clock
from .compilation import should_compile, warm_up
from .config import Config, ConfigError, to_dict
from .device import Runtime, cpu_flags, hardware
from .flops import flops_per_token, peak_flops, remember_mfu
from .metrics_log import MetricsLog, NoLog
from .optim import build_optimizer, lr_factor, set_lr
from .plan import budget_steps
from .progress import Progress, StopSignal
from .rundir import RunDir, git_commit, load_weights
from .step import train_step
from .tasks import build_model, build_task, model_config


MFU_WORTH_REMEMBERING = 5.0  # seconds of training after which a run's MFU is kept for `speedrun plan`


class Interrupted(Exception):
    """Training stopped by a signal after writing a checkpoint."""


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint written before it is kept."""


class Trainer:
    """One run: the task, the model, its optimizer, the clocks and what the loop logs to."""

    def __init__(self, cfg: Config, run: RunDir, rt: Runtime, progress: bool = True,
                 dist: distributed.Dist = distributed.Dist(), started: float | None = None):
        # the wall clock starts at process start when the CLI passes it, else now
        self.started = time.perf_counter() if started is None else started
        self.run, self.rt, self.dist = run, rt, dist
        tc = cfg.train
        if tc.grad_accum % dist.world:
            raise ConfigError(f"train.grad_accum={tc.grad_accum} must be a multiple of the "
                              f"{dist.world} processes, so the global batch stays the same")
        torch.manual_seed(tc.seed)
        # rank 0 prepares the data (the others would write the same shards at once), then all read it
        self.task = distributed.rank0_first(dist, lambda: build_task(cfg))
        self.cfg = cfg = dataclasses.replace(cfg, model=model_config(cfg, self.task))
        self.model = build_model(cfg, self.task, rt)
        self.optimizer = build_optimizer(self.model, cfg.optim, rt.dtype)
        self.generator = torch.Generator().manual_seed(tc.seed)
        self.tokens_per_step = tc.batch_size * tc.grad_accum * self.task.block_size
        self.flops_per_token = flops_per_token(self.model, self.task.block_size)
        self.peak_flops = peak_flops(rt.device, rt.dtype)  # measured once per machine, then cached
        self.peak_refreshed = False
        # A time budget lifts the step count (the run lasts the budget); max_steps caps both.
        steps = (self.task.planned_steps(self.tokens_per_step)
                 or budget_steps(tc, self.model.num_params(), self.tokens_per_step) or tc.steps)
        self.total_steps = tc.max_steps or None if tc.time_budget > 0 else min(steps, tc.max_steps or steps)
        self.compile = should_compile(cfg, rt, self.total_steps, self.tokens_per_step, self.flops_per_token,
                                      self.peak_flops)
        wrapped = self.model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(self.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
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
        self.bar = Progress(self.total_steps, progress and dist.is_main)
        self.stop = StopSignal()
        self.metrics = MetricsLog(run.path, None if tc.tensorboard else False, tc.wandb_project,
                                  to_dict(cfg)) if dist.is_main else NoLog()

    # --- the loop --------------------------------------------------------
    def train(self, resume: bool = False) -> dict:
        """Train until the steps, the time budget, the target or the task says stop; then the
        final evaluation and summary.json (rank 0), which train returns."""
        cfg, tc = self.cfg, self.cfg.train
        if resume:
            self.resume()
        elif tc.init_from:
            self.load_initial_weights(tc.init_from)
        if self.dist.is_main:
            self.run.write_tokenizer(self.task.tokenizer)
        verb = f"resuming at step {self.step}" if resume else "training"
        self.say(f"speedrun {cfg.recipe or cfg.task}: {verb}, {self.model.num_params():,} parameters "
                 f"on {self.rt.device} ({self.rt.dtype_name}{', compiled' if self.compile else ''})")
        self.setup_seconds += time.perf_counter() - self.started
        if self.compile:
            with self.compile_clock:
                warm_up(self.step_fn, self.optimizer, self.rt, tc.batch_size, self.task.block_size)
            self.say(f"compiled in {self.compile_clock.seconds:.1f}s (train.compile={tc.compile})")
        try:
            with self.stop:
                while self.total_steps is None or self.step < self.total_steps:
                    lr_scale = lr_factor(cfg.optim, self.step, self.progress())
                    with self.train_clock:
                        set_lr(self.optimizer, lr_scale)
                        loss, skipped = train_step(self.step_fn, self.model, self.optimizer, self.task, cfg,
                                                   self.rt, self.generator, self.dist)
                    self.step += 1
                    if skipped:
                        self.skipped_update(loss)
                    self.log_step(loss, skipped, lr_scale)
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
            self.save("last")
            if not self.dist.is_main:
                return {}
            with self.eval_clock:
                final = self.task.final_metrics(self.model, self.rt, self.step)
            self.record(final, final=True)
            summary = self.summary(final)
            self.run.write_summary(summary)
            self.say(self.done_line(summary, final))
            return summary
        except Interrupted as e:
            self.say(f"stopped by {e} at step {self.step}; checkpoint written. "
                     f"Resume with: speedrun train --resume {self.run.path}")
            raise
        finally:
            self.bar.close()
            self.metrics.close()

    # --- what the loop calls --------------------------------------------
    def wall_seconds(self) -> float:
        """Wall-clock seconds of this run so far, from process start (earlier processes included)."""
        return self.wall_before + time.perf_counter() - self.started

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

    def log_step(self, loss: torch.Tensor, skipped: bool, lr_scale: float) -> None:
        """Every log_every steps: the loss (averaged over processes) to the metrics and the log;
        the progress bar, when one is on screen, at every step. A non-finite loss stops the run."""
        log_now = self.step % self.cfg.train.log_every == 0 or self.step == self.total_steps
        if not (log_now or self.bar.live):
            return
        loss_value = distributed.mean(self.dist, loss.item()) if log_now else loss.item()
        tps = self.step * self.tokens_per_step / max(self.train_clock.seconds, 1e-9)
        if not math.isfinite(loss_value) and not skipped and (log_now or not self.dist.enabled):
            self.diverged(f"loss is {loss_value} at step {self.step}")
        self.bar.update(self.step, f"loss {loss_value:.4f}, {tps:,.0f} tok/s", log_now)
        if log_now:
            self.metrics.log({"step": self.step, "loss": loss_value, "lr_scale": lr_scale,
                              "train_seconds": self.train_clock.seconds, "tokens": self.step * self.tokens_per_step,
                              "tokens_per_second": tps, "mfu": self.mfu(tps)})
            if self.dist.is_main:
                self.run.log(f"step {self.step} loss {loss_value:.4f} {tps:,.0f} tok/s")

    def skipped_update(self, loss: torch.Tensor) -> None:
        self.skipped_steps += 1
        tc = self.cfg.train
        self.say(f"step {self.step}: loss is {loss.item()}, update skipped "
                 f"({self.skipped_steps} of train.skip_nonfinite={tc.skip_nonfinite})")
        self.metrics.log({"step": self.step, "skipped_nonfinite": self.skipped_steps})
        if self.skipped_steps > tc.skip_nonfinite:
            self.diverged(f"loss was not finite at {self.skipped_steps} steps, the last at step {self.step}")

    def evaluate(self) -> None:
        """The task's periodic evaluation; a sampled estimate that reaches the target is
        confirmed on the whole split before the target counts."""
        with self.eval_clock:
            metrics = self.task.evaluate(self.model, self.rt, self.step)
        self.record(metrics)
        if self.reached_target(metrics) and metrics.get("eval") == "sampled":
            with self.eval_clock:
                metrics = self.task.full_evaluate(self.model, self.rt, self.step)
            self.record(metrics)

    def reached_target(self, metrics: dict) -> bool:
        """The first evaluation at or below a target: on val_loss, or on val_bpb, the loss per
        byte of text, which a BPE model and a character model are compared on."""
        tc = self.cfg.train
        targets = ((tc.target_val_loss, metrics.get("val_loss")), (tc.target_val_bpb, metrics.get("val_bpb")))
        return self.time_to_target is None and any(t > 0 and v is not None and v <= t for t, v in targets)

    def record(self, metrics: dict, final: bool = False) -> None:
        """Log an evaluation; keep the best checkpoint; note the target, verification and early stops."""
        sample = metrics.pop("sample", None)
        if sample is not None:
            self.run.append_sample(self.step, sample, final)
        self.metrics.log({"step": self.step, "train_seconds": self.train_clock.seconds,
                          "tokens": self.step * self.tokens_per_step, **metrics})
        self.say(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                  if isinstance(v, float)))
        full = metrics.get("eval", "full") == "full"
        val = metrics.get("val_loss")
        if val is not None and full and val < self.best_val_loss:
            self.best_val_loss = val
            self.save("best")
        if metrics.get("verified") and self.time_to_verified is None:
            self.time_to_verified = self.wall_seconds()
        if self.reached_target(metrics) and full:
            self.time_to_target = self.wall_seconds()
            self.train_seconds_to_target = self.train_clock.seconds
            if not final and self.cfg.train.stop_at_target:
                self.stopped_by = "target"
        if metrics.get("done"):
            self.stopped_by = "task_done"

    def say(self, line: str) -> None:
        if self.dist.is_main:
            self.bar.write(line)
            self.run.log(line)

    def diverged(self, what: str) -> None:
        message = (f"{what}: training diverged; lower optim.lr or raise optim.warmup_steps "
                   f"(checkpoints from before step {self.step} are kept)")
        self.say(message)
        raise Diverged(message)

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

    # --- checkpoints -----------------------------------------------------
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
                "task": self.task.state_dict(),
            }
            if torch.cuda.is_available():
                state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
            self.run.save_checkpoint(name, self.model.state_dict(), state)

    def resume(self) -> None:
        model_state, state = self.run.load_checkpoint("last")
        load_weights(self.model, model_state, "checkpoint")
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
        load_weights(self.model, load_checkpoint(path)[0], f"train.init_from={source!r}: its checkpoint",
                     "; use the same [model] settings")

    # --- the summary -----------------------------------------------------
    def summary(self, final: dict) -> dict:
        """summary.json: the outcome, and every clock, wall_seconds last so that it covers the rest."""
        cfg = self.cfg
        tps = self.step * self.tokens_per_step / max(self.train_clock.seconds, 1e-9)
        summary = {
            "recipe": cfg.recipe, "task": cfg.task, "seed": cfg.train.seed, "steps": self.step,
            "stopped_by": self.stopped_by, "params": self.model.num_params(),
            "train_seconds": self.train_clock.seconds, "eval_seconds": self.eval_clock.seconds,
            "checkpoint_seconds": self.ckpt_clock.seconds, "compile_seconds": self.compile_clock.seconds,
            "setup_seconds": self.setup_seconds, "compiled": self.compile,
            "tokens": self.step * self.tokens_per_step, "tokens_per_second": tps,
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
            if cfg.train.target_val_bpb:
                summary["target_val_bpb"] = cfg.train.target_val_bpb
            summary["time_to_target"] = self.time_to_target
            summary["train_seconds_to_target"] = self.train_seconds_to_target
        if "exact_match" in final:
            summary["time_to_verified"] = self.time_to_verified
        summary["wall_seconds"] = self.wall_seconds()
        if self.dist.is_main and self.train_clock.seconds >= MFU_WORTH_REMEMBERING:
            remember_mfu(self.rt.device, self.rt.dtype, self.flops_per_token, summary["mfu"],
                         cfg.recipe or cfg.task, self.tokens_per_step, self.peak_flops)
        return summary

    def done_line(self, summary: dict, final: dict) -> str:
        return (f"done in {summary['wall_seconds']:.1f}s of wall-clock: {self.step} steps in "
                f"{self.train_clock.seconds:.1f}s of training ({summary['tokens_per_second']:,.0f} tokens/s, "
                f"MFU {summary['mfu']:.1%} of a measured {self.peak_flops / 1e9:,.0f} GFLOP/s "
                f"{self.rt.dtype_name} peak), {self.eval_clock.seconds:.1f}s of evaluation; " +
                ", ".join(f"{k} {v:.4f}" for k, v in final.items() if isinstance(v, float)))


def train(cfg: Config, run: RunDir, rt: Runtime, progress: bool = True, resume: bool = False,
          dist: distributed.Dist = distributed.Dist(), started: float | None = None) -> dict:
    return Trainer(cfg, run, rt, progress, dist, started).train(resume=resume)
