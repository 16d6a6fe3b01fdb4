"""Device and precision: pick the fastest thing the hardware really supports.

`auto` prefers CUDA, then MPS, then CPU. Every precision rule lives here:

1. `native_bf16(device)`: bf16 only where the hardware runs bf16 matmuls natively
   (CUDA with bf16 support, CPUs with AVX-512 BF16 or AMX). Emulated bf16 is ~3x
   slower than fp32, so without it everything runs fp32 (`Runtime.dtype`).
2. On a CPU, bf16 pays only for matrices wide enough that the faster matmuls outweigh
   the casts: the run's autocast from a model width of CPU_BF16_MIN_WIDTH
   (`pick_dtype`), Muon's Newton-Schulz from a matrix of CPU_NS_BF16_MIN_SIZE in
   both dimensions (`newton_schulz_dtype`); the two thresholds were measured apart
   because autocast pays its casts per layer and Newton-Schulz once per matrix.
3. Generating one token at a time, a CPU stays in fp32 (`Runtime.generation_autocast`).

float16 is refused (config): it needs a gradient scaler speedrun does not have.
Weights stay fp32 either way (autocast only changes the precision of the matrix
multiplications).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # float16 is refused (config)

# Measured on a Zen 4 EPYC with AVX-512 BF16: a `shakespeare-char` step (width 128) runs at 0.67x
# fp32's speed under bf16 autocast (casts outweigh the faster matmuls); `chat-base`'s 4 x 192 at
# 1.40-1.51x and round one's 4 x 256 at 1.52-1.64x (context 256, batch 16).
CPU_BF16_MIN_WIDTH = 192
# Newton-Schulz runs in bf16 on a CPU only for matrices at least this large in both dimensions:
# even native bf16 matmuls run slower below it (measured on Zen 4: 3x slower at 96x32 and at 384x128).
CPU_NS_BF16_MIN_SIZE = 256


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype  # compute dtype used by autocast (float32 means no autocast)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def generation_autocast(self):
        """Autocast for generating one token at a time. On a CPU, fp32: at one token
        per step autocast's casts cost more than bf16 matmuls save (measured: 3x
        slower per token even with native bf16)."""
        return self.autocast() if self.device.type == "cuda" else contextlib.nullcontext()


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def hardware() -> dict:
    """The machine this runs on: CPU model, logical core count, GPU name if CUDA sees one."""
    cpu = platform.processor() or platform.machine()
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "gpu": gpu}


def cpu_flags() -> list[str]:
    """The CPU's SIMD flags that decide matmul speed (avx2, avx512*, amx*), sorted."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return sorted({f for f in line.split(":", 1)[1].split()
                           if f.startswith(("avx512", "amx", "avx2", "fma"))})
    return []


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matmul (AVX-512 BF16 or AMX)."""
    flags = cpu_flags()
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    if flags:  # /proc/cpuinfo answered and named neither
        return False
    return torch.backends.mkldnn.is_available() and bool(
        getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()
    )


@functools.lru_cache(maxsize=None)
def native_bf16(device_type: str) -> bool:
    """The one precision decision: does this device run bf16 matmuls natively?
    Tests force either answer by patching this function."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return cpu_supports_bf16()
    return False


def newton_schulz_dtype(p: torch.Tensor, compute_dtype: torch.dtype) -> torch.dtype:
    """The dtype of Muon's Newton-Schulz for p: the run's matmul dtype (`Runtime.dtype`:
    emulated bf16 made Muon 6.5x slower than AdamW on a CPU without AVX-512), except fp32
    for small matrices on a CPU (CPU_NS_BF16_MIN_SIZE)."""
    if compute_dtype == torch.float32 or (p.device.type == "cpu" and min(p.shape) < CPU_NS_BF16_MIN_SIZE):
        return torch.float32
    return compute_dtype


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for but no CUDA GPU is visible to PyTorch; "
                          "install a CUDA build of torch or choose device=cpu explicitly")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device=mps was asked for but MPS is not available; choose device=cpu")
    if kind not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device, width: int | None = None) -> torch.dtype:
    """`auto`: bf16 where the device runs it natively (on a CPU, only for a model
    at least CPU_BF16_MIN_WIDTH wide); fp32 otherwise."""
    if name != "auto":
        return DTYPES[name]
    if not native_bf16(device.type):
        return torch.float32
    if device.type == "cpu" and width is not None and width < CPU_BF16_MIN_WIDTH:
        return torch.float32
    return torch.bfloat16


def setup_runtime(device: str = "auto", dtype: str = "auto", width: int | None = None) -> Runtime:
    """Resolve device and dtype, and use every core this process may run on.

    Under torchrun each process takes the GPU of its local rank, or on CPUs its
    share of the cores.
    """
    dev = pick_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if dev.type == "cuda" and dev.index is None and local_world > 1:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dev.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (cores or 1) // local_world))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(dev, pick_dtype(dtype, dev, width))
