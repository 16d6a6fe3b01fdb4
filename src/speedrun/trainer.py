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
import enum
import math
import platform
import time
from dataclasses import dataclass, field, fields
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
from .model import GPT
from .optim import build_optimizer, lr_factor, set_lr
from .plan import budget_steps
from .progress import Progress, StopSignal
from .rundir import RunDir, git_commit, load_weights
from .step import train_step
from .tasks import build_task, model_config

MFU_WORTH_REMEMBERING = 5.0  # seconds of training after which a run's MFU is kept for `speedrun plan`


class StopReason(str, enum.Enum):
    """Why the loop stopped: summary.json's `stopped_by`."""
    STEPS = "steps"  # the planned steps ran (and, while training, nothing has stopped it yet)
    TIME_BUDGET = "time_budget"  # train.time_budget of wall-clock passed
    TARGET = "target"  # an evaluation reached the target and train.stop_at_target holds
    TASK_DONE = "task_done"  # the task said it is done (addition: every pair right)
    PATIENCE = "val_plateau"  # train.patience whole-split evaluations in a row found no new best val_loss


@dataclass
class RunState:
    """Where a run stands beyond its weights, optimizer and data position: what a checkpoint
    saves, a resume restores and summary.json reports, defined once. Fields marked
    saved=False belong to one process: a resumed process starts them afresh."""
    train_clock: Clock
    eval_clock: Clock
    checkpoint_clock: Clock
    compile_clock: Clock
    step: int = 0
    setup_seconds: float = 0.0
    wall_before: float = field(default=0.0, metadata={"saved": False})  # wall-clock of earlier processes
    best_val_loss: float = math.inf
    best_step: int = 0  # the step of best.safetensors
    evals_since_best: int = 0  # whole-split evaluations since the best one, for train.patience
    time_to_target: float | None = None  # wall-clock seconds at the evaluation that first reached the target
    train_seconds_to_target: float | None = None
    time_to_verified: float | None = None  # wall-clock seconds when the task's exhaustive check passed
    stopped_by: StopReason = field(default=StopReason.STEPS, metadata={"saved": False})
    skipped_steps: int = field(default=0, metadata={"saved": False})

    CLOCKS = {"train_seconds": "train_clock", "eval_seconds": "eval_clock",
              "checkpoint_seconds": "checkpoint_clock", "compile_seconds": "compile_clock"}

    @classmethod
    def fresh(cls, device: torch.device) -> "RunState":
        return cls(*(Clock(device) for _ in cls.CLOCKS))

    def clock_seconds(self) -> dict:
        return {key: getattr(self, name).seconds for key, name in self.CLOCKS.items()} | {
            "setup_seconds": self.setup_seconds}

    @classmethod
    def kept(cls) -> list[str]:
        """The fields a checkpoint holds as they are (the clocks go as their seconds)."""
        return [f.name for f in fields(cls) if f.metadata.get("saved", True) and f.name not in cls.CLOCKS.values()]

    def saved(self, wall_seconds: float) -> dict:
        """The checkpoint's fields: every saved one, the clocks' seconds, the wall-clock so far."""
        return {**{name: getattr(self, name) for name in self.kept()}, **self.clock_seconds(),
                "wall_seconds": wall_seconds}

    @classmethod
    def restored(cls, state: dict, device: torch.device) -> "RunState":
        """The state a checkpoint saved (older checkpoints lack some keys: their defaults)."""
        run = cls.fresh(device)
        for key, name in cls.CLOCKS.items():
            getattr(run, name).seconds = state.get(key, 0.0)
        for name in cls.kept():
            if name in state:
                setattr(run, name, state[name])
        if run.best_val_loss is None:
            run.best_val_loss = math.inf
        run.wall_before = state.get("wall_seconds", state["train_seconds"])
        return run


@dataclass
class Parts:
    """What a run trains: its config (the model's vocabulary and context filled in from the
    task), the task, the model and the optimizer."""
    cfg: Config
    task: object
    model: torch.nn.Module
    optimizer: object


def build_parts(cfg: Config, rt: Runtime, dist: distributed.Dist = distributed.Dist()) -> Parts:
    """The task, the model and the optimizer of `cfg`, seeded by train.seed; the trainer and
    the benchmarks that time bare steps build them here, the same way."""
    torch.manual_seed(cfg.train.seed)
    # rank 0 prepares the data (the others would write the same shards at once), then all read it
    task = distributed.rank0_first(dist, lambda: build_task(cfg))
    cfg = dataclasses.replace(cfg, model=model_config(cfg, task))
    model = GPT(cfg.model).to(rt.device)
    return Parts(cfg, task, model, build_optimizer(model, cfg.optim, rt.dtype))


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
        parts = build_parts(cfg, rt, dist)
        cfg = parts.cfg  # with the task's vocabulary and context filled in
        self.cfg, self.task, self.model, self.optimizer = cfg, parts.task, parts.model, parts.optimizer
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
        self.state = RunState.fresh(rt.device)
        self.bar = Progress(self.total_steps, progress and dist.is_main)
        self.stop = StopSignal()
        self.metrics = MetricsLog(run, None if tc.tensorboard else False, tc.wandb_project,
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
        verb = f"resuming at step {self.state.step}" if resume else "training"
        self.say(f"speedrun {cfg.recipe or cfg.task}: {verb}, {self.model.num_params():,} parameters "
                 f"on {self.rt.device} ({self.rt.dtype_name}{', compiled' if self.compile else ''})")
        self.state.setup_seconds += time.perf_counter() - self.started
        if self.compile:
            with self.state.compile_clock:
                warm_up(self.step_fn, self.optimizer, self.rt, tc.batch_size, self.task.block_size)
            self.say(f"compiled in {self.state.compile_clock.seconds:.1f}s (train.compile={tc.compile})")
        try:
            with self.stop:
                while self.total_steps is None or self.state.step < self.total_steps:
                    lr_scale = lr_factor(cfg.optim, self.state.step, self.progress())
                    with self.state.train_clock:
                        set_lr(self.optimizer, lr_scale)
                        loss, skipped = train_step(self.step_fn, self.model, self.optimizer, self.task, cfg,
                                                   self.rt, self.generator, self.dist)
                    self.state.step += 1
                    if skipped:
                        self.skipped_update(loss)
                    self.log_step(loss, skipped, lr_scale)
                    if tc.time_budget > 0 and self.wall_seconds() >= tc.time_budget:
                        self.state.stopped_by = StopReason.TIME_BUDGET
                    if tc.eval_every and self.state.step % tc.eval_every == 0 and self.state.step != self.total_steps \
                            and self.state.stopped_by == StopReason.STEPS:
                        if self.dist.is_main:
                            self.evaluate()
                        self.save("last")
                    # Every process stops at the same step: a signal or a stop reason anywhere stops all.
                    interrupted, stopping = distributed.any_rank(self.dist, self.stop.received is not None,
                                                                 self.state.stopped_by != StopReason.STEPS)
                    if interrupted:
                        self.save("last")
                        raise Interrupted(self.stop.received or "a signal to another process")
                    if stopping:
                        self.state.stopped_by = distributed.share(self.dist, self.state.stopped_by)
                        break
            self.save("last")
            if not self.dist.is_main:
                return {}
            self.become_the_runs_model()
            with self.state.eval_clock:
                final = self.task.final_metrics(self.model, self.rt, self.state.step)
            self.record(final, final=True)
            summary = self.summary(final)
            self.run.write_summary(summary)
            if self.state.train_clock.seconds >= MFU_WORTH_REMEMBERING:  # for `speedrun plan`
                remember_mfu(self.rt.device, self.rt.dtype, self.flops_per_token, summary["mfu"],
                             cfg.recipe or cfg.task, self.tokens_per_step, self.peak_flops)
            self.say(self.done_line(summary, final))
            return summary
        except Interrupted as e:
            self.say(f"stopped by {e} at step {self.state.step}; checkpoint written. "
                     f"Resume with: speedrun train --resume {self.run.path}")
            raise
        finally:
            self.bar.close()
            self.metrics.close()

    # --- what the loop calls --------------------------------------------
    def wall_seconds(self) -> float:
        """Wall-clock seconds of this run so far, from process start (earlier processes included)."""
        return self.state.wall_before + time.perf_counter() - self.started

    def progress(self) -> float:
        """How far along the schedule is: by steps, by the time budget, whichever is further,
        so a run anneals before it stops, whichever stops it."""
        warmup = self.cfg.optim.warmup_steps
        # the step about to be taken is number step + 1: the last one runs at the schedule's end
        by_steps = (self.state.step + 1 - warmup) / max(1, self.total_steps - warmup) if self.total_steps else 0.0
        budget = self.cfg.train.time_budget
        if budget <= 0:
            return by_steps
        # over the part of the budget left when training began (setup and compile spent the rest)
        begun = self.state.setup_seconds + self.state.compile_clock.seconds
        return max(by_steps, (self.wall_seconds() - begun) / max(budget - begun, 1e-9))

    def log_step(self, loss: torch.Tensor, skipped: bool, lr_scale: float) -> None:
        """Every log_every steps: the loss (averaged over processes) to the metrics and the log;
        the progress bar, when one is on screen, at every step. A non-finite loss stops the run."""
        log_now = self.state.step % self.cfg.train.log_every == 0 or self.state.step == self.total_steps
        if not (log_now or self.bar.live):
            return
        loss_value = distributed.mean(self.dist, loss.item()) if log_now else loss.item()
        tps = self.state.step * self.tokens_per_step / max(self.state.train_clock.seconds, 1e-9)
        if not math.isfinite(loss_value) and not skipped and (log_now or not self.dist.enabled):
            self.diverged(f"loss is {loss_value} at step {self.state.step}")
        self.bar.update(self.state.step, f"loss {loss_value:.4f}, {tps:,.0f} tok/s", log_now)
        if log_now:
            self.metrics.log({"step": self.state.step, "loss": loss_value, "lr_scale": lr_scale,
                              "train_seconds": self.state.train_clock.seconds, "tokens": self.state.step * self.tokens_per_step,
                              "tokens_per_second": tps, "mfu": self.mfu(tps)})
            if self.dist.is_main:
                self.run.log(f"step {self.state.step} loss {loss_value:.4f} {tps:,.0f} tok/s")

    def skipped_update(self, loss: torch.Tensor) -> None:
        self.state.skipped_steps += 1
        tc = self.cfg.train
        self.say(f"step {self.state.step}: loss is {loss.item()}, update skipped "
                 f"({self.state.skipped_steps} of train.skip_nonfinite={tc.skip_nonfinite})")
        self.metrics.log({"step": self.state.step, "skipped_nonfinite": self.state.skipped_steps})
        if self.state.skipped_steps > tc.skip_nonfinite:
            self.diverged(f"loss was not finite at {self.state.skipped_steps} steps, the last at step {self.state.step}")

    def evaluate(self) -> None:
        """The task's periodic evaluation; a sampled estimate that reaches the target is
        confirmed on the whole split before the target counts."""
        with self.state.eval_clock:
            metrics = self.task.evaluate(self.model, self.rt, self.state.step)
        self.record(metrics)
        if self.reached_target(metrics) and metrics.get("eval") == "sampled":
            with self.state.eval_clock:
                metrics = self.task.full_evaluate(self.model, self.rt, self.state.step)
            self.record(metrics)

    def reached_target(self, metrics: dict) -> bool:
        """The first evaluation at or below a target: on val_loss, or on val_bpb, the loss per
        byte of text, which a BPE model and a character model are compared on."""
        tc = self.cfg.train
        targets = ((tc.target_val_loss, metrics.get("val_loss")), (tc.target_val_bpb, metrics.get("val_bpb")))
        return self.state.time_to_target is None and any(t > 0 and v is not None and v <= t for t, v in targets)

    def record(self, metrics: dict, final: bool = False) -> None:
        """Log an evaluation; keep the best checkpoint; note the target, verification and early stops.
        Only a whole-split evaluation chooses the best checkpoint or counts towards train.patience:
        a sampled estimate is too noisy to keep or stop on."""
        sample = metrics.pop("sample", None)
        if sample is not None:
            self.run.append_sample(self.state.step, sample, final)
        self.metrics.log({"step": self.state.step, "train_seconds": self.state.train_clock.seconds,
                          "tokens": self.state.step * self.tokens_per_step, **metrics})
        self.say(f"step {self.state.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                  if isinstance(v, float)))
        full = metrics.get("eval", "full") == "full"
        val = metrics.get("val_loss")
        if val is not None and full and val < self.state.best_val_loss:
            self.state.best_val_loss, self.state.best_step, self.state.evals_since_best = val, self.state.step, 0
            self.save("best")
        elif val is not None and full and not final:
            self.state.evals_since_best += 1
            if self.cfg.train.patience and self.state.evals_since_best >= self.cfg.train.patience:
                self.state.stopped_by = StopReason.PATIENCE
        if metrics.get("verified") and self.state.time_to_verified is None:
            self.state.time_to_verified = self.wall_seconds()
        if self.reached_target(metrics) and full:
            self.state.time_to_target = self.wall_seconds()
            self.state.train_seconds_to_target = self.state.train_clock.seconds
            if not final and self.cfg.train.stop_at_target:
                self.state.stopped_by = StopReason.TARGET
        if metrics.get("done"):
            self.state.stopped_by = StopReason.TASK_DONE

    def say(self, line: str) -> None:
        if self.dist.is_main:
            self.bar.write(line)
            self.run.log(line)

    def diverged(self, what: str) -> None:
        message = (f"{what}: training diverged; lower optim.lr or raise optim.warmup_steps "
                   f"(checkpoints from before step {self.state.step} are kept)")
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
        with self.state.checkpoint_clock:
            state = {
                "config": to_dict(self.cfg), "optimizer": self.optimizer.state_dict(),
                **self.state.saved(self.wall_seconds()),
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
        # this process's own start-up counts again: it is a cost of the interruption
        self.state = RunState.restored(state, self.rt.device)
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if state["task"]:
            self.task.load_state_dict(state["task"])
        if self.dist.is_main:
            self.run.truncate_metrics(self.state.step)

    def become_the_runs_model(self) -> None:
        """Before the final evaluation: take the weights of the checkpoint that is the run's model
        (`RunDir.model_checkpoint`: the best one for a run that stops by val), so that the
        summary's metrics are those of the model every loader gives (checkpoints/last keeps the
        last step's weights, to resume from)."""
        if self.run.model_checkpoint() != "best" or self.state.best_step in (0, self.state.step):
            return
        load_weights(self.model, self.run.load_checkpoint("best")[0], "the best checkpoint")
        self.say(f"the run's model is its best checkpoint, step {self.state.best_step} "
                 f"(val_loss {self.state.best_val_loss:.4f}); the final metrics are its")

    def load_initial_weights(self, source: str) -> None:
        """Start from another run's model (fine-tuning): its weights only, not its optimizer or
        step; a run directory's model is the checkpoint `RunDir.load_model_weights` picks."""
        path = Path(source)
        run = RunDir(path) if path.is_dir() else None
        if not (run.has_checkpoint() if run else path.is_file()):
            raise ConfigError(f"train.init_from={source!r}: no checkpoint there; give a .safetensors "
                              "checkpoint or a run directory that has checkpoints/last.safetensors")
        weights = run.load_model_weights()[0] if run else load_checkpoint(path)[0]
        load_weights(self.model, weights, f"train.init_from={source!r}: its checkpoint",
                     "; use the same [model] settings")

    # --- the summary -----------------------------------------------------
    def summary(self, final: dict) -> dict:
        """summary.json: the outcome, and every clock, wall_seconds last so that it covers the rest."""
        cfg = self.cfg
        tps = self.state.step * self.tokens_per_step / max(self.state.train_clock.seconds, 1e-9)
        summary = {
            "recipe": cfg.recipe, "task": cfg.task, "seed": cfg.train.seed, "steps": self.state.step,
            "stopped_by": StopReason(self.state.stopped_by).value, "params": self.model.num_params(),
            **self.state.clock_seconds(), "compiled": self.compile,
            "tokens": self.state.step * self.tokens_per_step, "tokens_per_second": tps,
            "flops_per_token": self.flops_per_token, "peak_flops": self.peak_flops, "mfu": self.mfu(tps),
            "device": str(self.rt.device), "dtype": self.rt.dtype_name,
            "hardware": {**hardware(), "cpu_flags": cpu_flags()},
            "torch_version": torch.__version__,
            "python_version": platform.python_version(), "git_commit": git_commit(),
            "metrics": final,
        }
        if "val_loss" in final:
            summary["metrics"]["best_val_loss"] = self.state.best_val_loss
            summary["target_val_loss"] = cfg.train.target_val_loss or None
            if cfg.train.target_val_bpb:
                summary["target_val_bpb"] = cfg.train.target_val_bpb
            summary["time_to_target"] = self.state.time_to_target
            summary["train_seconds_to_target"] = self.state.train_seconds_to_target
            if cfg.train.patience:  # the run's model is its best checkpoint (RunDir.load_model_weights)
                summary["best_step"] = self.state.best_step
        if "exact_match" in final:
            summary["time_to_verified"] = self.state.time_to_verified
        summary["wall_seconds"] = self.wall_seconds()
        return summary

    def done_line(self, summary: dict, final: dict) -> str:
        return (f"done in {summary['wall_seconds']:.1f}s of wall-clock: {self.state.step} steps in "
                f"{self.state.train_clock.seconds:.1f}s of training ({summary['tokens_per_second']:,.0f} tokens/s, "
                f"MFU {summary['mfu']:.1%} of a measured {self.peak_flops / 1e9:,.0f} GFLOP/s "
                f"{self.rt.dtype_name} peak), {self.state.eval_clock.seconds:.1f}s of evaluation; " +
                ", ".join(f"{k} {v:.4f}" for k, v in final.items() if isinstance(v, float)))

