"""How the benchmarks time what they measure: a whole `speedrun` command in a fresh process (cold,
or with its peak memory), and bare optimizer steps inside this one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

COLD_NOTE = "every command in a fresh process with an empty SPEEDRUN_CACHE and Inductor cache"


def cold_env(out: Path) -> dict:
    """This environment with empty caches (token files, matmul peak, Inductor) named after `out`."""
    return dict(os.environ, SPEEDRUN_CACHE=str(out) + "-cache", TORCHINDUCTOR_CACHE_DIR=str(out) + "-inductor")


def cold_command(args: list[str], out: Path, run_dir: Path) -> dict:
    """`speedrun ARGS` in a fresh process with empty caches (`cold_env`), as a new user's first
    run: the summary it wrote in the run folder `run_dir`, plus the stopwatch."""
    from speedrun.rundir import RunDir

    env = cold_env(out)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "speedrun", *args], check=True, stdout=subprocess.DEVNULL, env=env)
    summary = RunDir(run_dir).read_summary()
    summary["stopwatch"] = time.perf_counter() - t0
    return summary


def cold_run(recipe: str, data: Path, out: Path, extra: list[str]) -> dict:
    """One whole training command, cold; its summary plus the stopwatch."""
    return cold_command(["train", recipe, "data.sample_tokens=0", "train.tensorboard=false", *extra,
                         "--data", str(data), "--out", str(out), "--quiet"], out, out)


def resolves_to_fp32(recipe: str, overrides: list[str] = ()) -> bool:
    """Whether dtype=auto trains this recipe in fp32 on this machine (as on a CPU without native bf16)."""
    from speedrun.config import load_config
    from speedrun.run import Run

    return Run(load_config(recipe, [*overrides, "device=cpu", "dtype=auto"])).runtime().dtype_name == "float32"


def drop_page_cache() -> bool:
    """Whether the OS page cache could be emptied (needs root, and not every container lets it)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def measured(args: list[str], env: dict, log: Path) -> dict:
    """Stopwatch and peak resident memory (its own ru_maxrss, from wait4) of one `python -m
    speedrun` process, its output in `log`."""
    with log.open("w") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "speedrun", *args], env=env, stdout=f, stderr=f)
        _, status, usage = os.wait4(proc.pid, 0)
        stopwatch = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    return {"stopwatch": stopwatch, "peak_rss_bytes": usage.ru_maxrss * 1024}


def time_steps(cfg, steps: int, warmup: int, compile_model: bool = False) -> tuple[float, float]:
    """(seconds per optimizer step, seconds of warm-up) for `cfg`, timed like the trainer's clock."""
    import torch

    from speedrun.run import Run
    from speedrun.step import train_step

    rt, parts = Run(cfg).parts()
    cfg, task, model, optimizer = parts.cfg, parts.task, parts.model, parts.optimizer
    step_fn = torch.compile(model) if compile_model else model
    generator = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(warmup):
        train_step(step_fn, model, optimizer, task, cfg, rt, generator)
    t1 = time.perf_counter()
    for _ in range(steps):
        train_step(step_fn, model, optimizer, task, cfg, rt, generator)
    return (time.perf_counter() - t1) / steps, t1 - t0
