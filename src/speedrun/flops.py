"""Model FLOPs, this machine's measured matmul peak, and MFU.

FLOPs are counted the standard way (Kaplan et al. 2020; PaLM appendix B): a
training token costs 6 FLOPs for each of the N weights it is multiplied by
(2 forward, 4 backward), plus attention's scores and weighted sum,
12 x n_layer x n_embd x T for context length T. N counts the blocks and the
output head, not the embedding tables (a lookup, not a matmul).

The peak is measured, not taken from a data sheet: the best of a few large
square matmuls in the dtype training uses. It is cached per machine, device
and dtype (`speedrun bench peak` refreshes it), so runs do not pay for it.
"""

from __future__ import annotations

import json
import os
import time

import torch



def flops_per_token(model, context: int) -> float:
    """Training FLOPs per token: 6 x (block and head weights) + 12 x layers x width x context."""
    matmul_params = sum(p.numel() for p in model.blocks.parameters()) + model.head.weight.numel()
    cfg = model.cfg
    return 6.0 * matmul_params + 12.0 * cfg.n_layer * cfg.n_embd * context


def measure_peak(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    """Best observed FLOP/s of size x size matmuls in `dtype` on `device`."""
    g = torch.Generator(device=device).manual_seed(0)  # leave the global RNG, and so training, untouched
    a = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    best, deadline = 0.0, time.perf_counter() + seconds
    for i in range(100):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first call pays for warm-up
            best = max(best, 2 * size ** 3 / (time.perf_counter() - t0))
        if i >= 3 and time.perf_counter() > deadline:
            break
    return best


def _cache_path():
    from .data import cache_root

    return cache_root() / "peak_flops.json"


def _key(device: torch.device, dtype: torch.dtype) -> str:
    from .device import hardware

    h = hardware()
    name = h["gpu"] if device.type == "cuda" else h["cpu"]
    return f"{name}|{device.type}|{str(dtype).replace('torch.', '')}|threads={torch.get_num_threads()}"


def peak_flops(device: torch.device, dtype: torch.dtype, refresh: bool = False) -> float:
    """The cached measured peak for this machine, device and dtype (measured if missing)."""
    path = _cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    key = _key(device, dtype)
    if refresh or key not in cache:
        cache[key] = measure_peak(device, dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=2))
        tmp.replace(path)
    return cache[key]
