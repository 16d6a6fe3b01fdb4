"""Clocks: the wall-clock a user's stopwatch sees, and the clock of one kind of work.

Every headline figure is wall-clock from process start (`wall_seconds`,
`time_to_target`, `time_to_verified`): Python and torch imports, data, the
tokenizer, compilation, evaluation and checkpoints all count. Finer clocks
(`train_seconds`, `eval_seconds`, ...) are reported beside it, never instead.
"""

from __future__ import annotations

import os
import time

import torch

_IMPORTED = time.perf_counter()


def process_start() -> float:
    """`time.perf_counter()` at the moment this process started, read from /proc on
    Linux (so the interpreter's start and every import count), else when this module
    was imported."""
    try:
        with open("/proc/self/stat") as f:
            # the command name (field 2) may hold spaces; fields after its ')' are fixed
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED
    now = time.perf_counter()
    return now - age if 0 <= age < now - _IMPORTED + 3600 else _IMPORTED


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
