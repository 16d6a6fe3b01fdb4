"""One optimizer step over a global batch, across processes: the piece of the loop benchmarks reuse."""

from __future__ import annotations

import contextlib

import torch

from . import distributed
from .config import Config
from .device import Runtime


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
        x, y = task.train_batch(cfg.train.batch_size, generator)  # (B, T) each
        if i not in mine:
            continue
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        # DDP all-reduces gradients on the last local backward only.
        # (one context around forward and backward: DDP's no_sync cannot be entered twice)
        sync = contextlib.nullcontext() if i == mine[-1] or not d.enabled else step_fn.no_sync()
        with sync:
            with rt.autocast():
                _, loss = step_fn(x, y)
            (loss / len(mine)).backward()
        total += loss.detach()
    skip = cfg.train.skip_nonfinite > 0 and distributed.any_rank(d, not bool(torch.isfinite(total)))
    if not skip:
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / len(mine), skip
