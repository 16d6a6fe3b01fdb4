"""Model FLOPs, this machine's measured matmul peak, and MFU.

FLOPs are counted the standard way (Kaplan et al. 2020; PaLM appendix B): a
training token costs 6 FLOPs for each of the N weights it is multiplied by
(2 forward, 4 backward), plus attention's scores and weighted sum,
12 x n_layer x n_embd x T for context length T. N counts the blocks and the
output head, not the embedding tables (a lookup, not a matmul).

The peak is measured, not taken from a data sheet: the median of several
timed trials of large square matmuls in the dtype the matmuls run in, after a
warm-up. It is cached per CPU model and flags (or GPU), device, dtype and thread
count, with the date and how it was measured; `speedrun bench peak` refreshes it.
A cached peak that a run beats (MFU over 100%) was measured while the machine was
busy: the run re-measures it instead of printing an impossible MFU.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import torch

TRIALS = 3  # timed matmuls after one warm-up; the peak is their median. Measured on a Zen 4 EPYC,
# the median of 3 after one warm-up read within 2% of the median of 7 after two, in 0.4 s, not 0.9 s


def flops_per_token(model, context: int) -> float:
    """Training FLOPs per token: 6 x (block and head weights) + 12 x layers x width x context."""
    matmul_params = sum(p.numel() for p in model.blocks.parameters()) + model.head.weight.numel()
    cfg = model.cfg
    return 6.0 * matmul_params + 12.0 * cfg.n_layer * cfg.n_embd * context


def measure_peak(device: torch.device, dtype: torch.dtype, size: int | None = None, trials: int = TRIALS) -> float:
    """Median FLOP/s of `trials` size x size matmuls in `dtype` on `device`, after one
    untimed warm-up call. The median, not the best, so one lucky trial does not set it.
    2048 on a CPU (1024 read ~40% low for fp32 on a Zen 4 EPYC), 4096 on a GPU."""
    size = size or (2048 if device.type == "cpu" else 4096)
    g = torch.Generator(device=device).manual_seed(0)  # leave the global RNG, and so training, untouched
    a = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    rates = []
    for i in range(trials + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 1:
            rates.append(2 * size ** 3 / (time.perf_counter() - t0))
    return statistics.median(rates)


def _cache_path():
    from .data import cache_root

    return cache_root() / "peak_flops.json"


def peak_key(device: torch.device, dtype: torch.dtype) -> str:
    """What a peak depends on: the chip (CPU model and its SIMD flags, or the GPU), device, dtype, threads."""
    from .device import cpu_flags, hardware

    h = hardware()
    name = h["gpu"] if device.type == "cuda" else f"{h['cpu']} [{' '.join(cpu_flags())}]"
    return f"{name}|{device.type}|{str(dtype).replace('torch.', '')}|threads={torch.get_num_threads()}"


def _read_cache() -> dict:
    try:
        cache = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    # entries of older versions were bare numbers, without the date and method: measure again
    return {k: v for k, v in cache.items() if isinstance(v, dict) and "flops" in v} if isinstance(cache, dict) else {}


def peak_flops(device: torch.device, dtype: torch.dtype, refresh: bool = False) -> float:
    """The cached measured peak for this machine, device and dtype (measured if missing or refreshed)."""
    return peak_record(device, dtype, refresh)["flops"]


def peak_record(device: torch.device, dtype: torch.dtype, refresh: bool = False) -> dict:
    """{flops, measured (date), method} for this machine, device and dtype."""
    cache = _read_cache()
    key = peak_key(device, dtype)
    if refresh or key not in cache:
        cache[key] = {"flops": measure_peak(device, dtype),
                      "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "method": f"median of {TRIALS} square matmuls after 2 warm-up calls"}
        path = _cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=2))
        tmp.replace(path)
    return cache[key]


# --- the MFU runs reach, remembered for `speedrun plan` ---------------------------
def _mfu_path():
    from .data import cache_root

    return cache_root() / "mfu.json"


def remember_mfu(device: torch.device, dtype: torch.dtype, flops_per_token: float, mfu: float,
                 recipe: str, tokens_per_step: int, peak: float) -> None:
    """Keep the training MFU a finished run reached on this machine (against `peak`, the
    measured one), one entry per recipe and shape, so that a plan of a similar run uses what
    such runs reach here."""
    path = _mfu_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    entries = [e for e in cache.get(peak_key(device, dtype), [])
               if not (e["recipe"] == recipe and e["flops_per_token"] == flops_per_token)]
    entries.append({"recipe": recipe, "flops_per_token": flops_per_token, "tokens_per_step": tokens_per_step,
                    "mfu": mfu, "peak_flops": peak, "measured": time.strftime("%Y-%m-%d %H:%M:%S")})
    cache[peak_key(device, dtype)] = entries[-50:]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(cache, indent=1))
    tmp.replace(path)


def known_mfu(device: torch.device, dtype: torch.dtype, flops_per_token: float, gpu_name: str = "") -> dict | None:
    """The remembered run nearest in FLOPs per token (by ratio): on this machine, device and
    dtype, or with `gpu_name` on any CUDA GPU whose name holds it (e.g. "H100") in that dtype.
    None when no such run has finished."""
    import math

    try:
        cache = json.loads(_mfu_path().read_text())
        if gpu_name:
            wanted = f"|cuda|{str(dtype).replace('torch.', '')}|"
            entries = [e for key, found in cache.items() if wanted in key
                       and gpu_name.lower() in key.split("|")[0].lower() for e in found]
        else:
            entries = cache.get(peak_key(device, dtype), [])
        return min(entries, key=lambda e: abs(math.log(e["flops_per_token"] / flops_per_token)), default=None)
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None
