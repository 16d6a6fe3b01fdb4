"""The machine line every benchmark prints first: CPU model and SIMD flags, native bf16, and the
matmul peaks measured afresh (which also refreshes the cache that runs read MFU against)."""

from __future__ import annotations


def describe() -> str:
    import torch

    from speedrun.device import cpu_flags, hardware, native_bf16
    from speedrun.flops import peak_flops

    h, cpu = hardware(), torch.device("cpu")
    peaks = ", ".join(f"{name} {peak_flops(cpu, dtype, refresh=True) / 1e9:,.0f} GFLOP/s"
                      for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)))
    return (f"machine: {h['cpu']}, {h['cpu_count']} cores, flags [{' '.join(cpu_flags()) or 'none'}], "
            f"native bf16: {'yes' if native_bf16('cpu') else 'no'}; measured matmul peaks: {peaks}; "
            f"torch {torch.__version__}")
