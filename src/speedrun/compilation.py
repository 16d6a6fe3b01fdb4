"""torch.compile where it pays, on the clock.

A cold compile costs 20-50 s on a 2-core CPU and buys ~1.3x the tokens per
second, so `train.compile = "auto"` turns it on only for runs expected to last
COMPILE_PAYS_AFTER_SECONDS. The compile happens before the first step, timed as
`compile_seconds`, which count in `wall_seconds` and in the time budget.
"""

from __future__ import annotations

import torch

from .config import Config
from .device import Runtime

COMPILE_PAYS_AFTER_SECONDS = 300.0
# The MFU a run of our small models reaches at best, to estimate how long an unbudgeted run takes.
ESTIMATED_MFU = 0.3


def should_compile(cfg: Config, rt: Runtime, total_steps: int | None, tokens_per_step: int,
                   flops_per_token: float, peak_flops: float) -> bool:
    """train.compile=auto: compile when the run's time budget, or else its steps' FLOPs at
    ESTIMATED_MFU of the measured peak, reach COMPILE_PAYS_AFTER_SECONDS."""
    setting = cfg.train.compile
    if setting != "auto":
        return bool(setting)
    if rt.device.type == "mps":
        return False
    if cfg.train.time_budget > 0:
        expected = cfg.train.time_budget
    else:
        expected = total_steps * tokens_per_step * flops_per_token / (peak_flops * ESTIMATED_MFU)
    return expected >= COMPILE_PAYS_AFTER_SECONDS


def warm_up(step_fn, optimizer, rt: Runtime, batch_size: int, block_size: int) -> None:
    """Compile now: one forward and backward of a training-shaped batch of zeros, its
    gradients dropped and the global RNGs left as they were (dropout draws from them: the
    CPU's, or the GPU's on CUDA)."""
    x = torch.zeros(batch_size, block_size, dtype=torch.long, device=rt.device)
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(rt.device) if rt.device.type == "cuda" else None  # dropout's, on a GPU
    with rt.autocast():
        _, loss = step_fn(x, x)
    loss.backward()
    optimizer.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, rt.device)
