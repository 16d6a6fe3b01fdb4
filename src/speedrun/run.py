"""One training run, set up in one place.

    Run(cfg, out=..., started=...).execute()     a new run
    Run.resumed(run_dir, started=...).execute()  an interrupted run, continued

`Run` resolves what a run needs from its config, in this order: the runtime (device
and the one precision decision: `runtime_for`, the only caller of `device.setup_runtime`,
which `speedrun.loading` also asks for a trained model), the processes (`torchrun`'s
environment), the run folder (made by rank 0, shared with the others, removed again
when a user error stops the run before its first checkpoint), and the `Trainer`,
which builds the task, the model and the optimizer and owns the loop. `speedrun train`,
the chat pipeline's stages and the benchmarks all start runs through it.

The run's wall clock starts at `started`: `speedrun train` passes the process start
(`clock.process_start`), so a time budget and every headline figure count imports and
setup; a caller that runs several stages in one process passes each stage's start.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import distributed
from .chat.template import TemplateError
from .checkpoint import CheckpointError
from .config import Config, ConfigError
from .data import DataError
from .device import Runtime, setup_runtime
from .rundir import RunDir
from .tokenizer import TokenizerError
from .trainer import Parts, Trainer, build_parts

# the errors a user fixes: one line and exit code 2 from every command
USER_ERRORS = (ConfigError, CheckpointError, TokenizerError, DataError, TemplateError)


def runtime_for(cfg: Config, device: str | None = None) -> Runtime:
    """Device and precision for a config (on `device` instead of the config's, where given): the
    one place they are resolved, for a run and for a model loaded from one alike."""
    return setup_runtime(cfg.device if device is None else device, cfg.dtype, cfg.model.n_embd)


class Run:
    def __init__(self, cfg: Config, out: str | Path | None = None, started: float | None = None,
                 progress: bool = True, resume_dir: RunDir | None = None):
        self.cfg, self.out, self.progress, self.resume_dir = cfg, out, progress, resume_dir
        self.started = time.perf_counter() if started is None else started

    @classmethod
    def resumed(cls, run_dir: str | Path, started: float | None = None, progress: bool = True) -> "Run":
        folder = RunDir(Path(run_dir))
        return cls(folder.resume_config(), started=started, progress=progress, resume_dir=folder)

    def execute(self) -> dict:
        """Train; the summary on rank 0 ({} on the others). Interrupted and Diverged pass through."""
        rt = self.runtime()
        dist = distributed.init(distributed.from_environment(), rt.device)
        try:
            run = self.resume_dir or self.new_folder(dist)
            if dist.is_main:
                print(f"run directory: {run.path}" + (f" ({dist.world} processes)" if dist.enabled else ""),
                      flush=True)
            try:
                trainer = Trainer(self.cfg, run, rt, self.progress, dist, self.started)
                return trainer.train(resume=self.resume_dir is not None)
            except USER_ERRORS:
                if dist.is_main and self.resume_dir is None:
                    run.discard_unstarted()
                raise
        finally:
            distributed.close(dist)

    def parts(self) -> tuple[Runtime, Parts]:
        """The runtime, task, model and optimizer, without a folder or a loop: for a benchmark
        that times bare steps of exactly what a run would train."""
        rt = self.runtime()
        return rt, build_parts(self.cfg, rt)

    def runtime(self) -> Runtime:
        return runtime_for(self.cfg)

    def new_folder(self, dist: distributed.Dist) -> RunDir:
        """Rank 0 makes the run folder; the others use its path."""
        path = distributed.share(dist, str(RunDir.create(self.cfg, self.out).path) if dist.is_main else None)
        return RunDir(Path(path))
