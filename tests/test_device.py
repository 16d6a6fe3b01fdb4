import pytest
import torch

from speedrun import device
from speedrun.device import CPU_BF16_MIN_WIDTH, pick_dtype, setup_runtime


@pytest.fixture
def bf16(monkeypatch):
    """Make the one precision decision answer as a given CPU would."""
    def force(answer: bool):
        monkeypatch.setattr(device, "native_bf16", lambda device_type: answer)
    return force


def test_auto_follows_native_bf16(bf16):
    cpu = torch.device("cpu")
    bf16(False)
    assert pick_dtype("auto", cpu, CPU_BF16_MIN_WIDTH) == torch.float32
    assert setup_runtime("cpu", "auto", 512).dtype == torch.float32
    bf16(True)
    assert pick_dtype("auto", cpu, CPU_BF16_MIN_WIDTH) == torch.bfloat16
    # narrow models stay fp32 on a CPU even with native bf16: the casts cost more than they save
    assert pick_dtype("auto", cpu, CPU_BF16_MIN_WIDTH // 2) == torch.float32


def test_explicit_dtype_is_kept(bf16):
    bf16(False)
    assert pick_dtype("bfloat16", torch.device("cpu"), 512) == torch.bfloat16
    assert pick_dtype("float32", torch.device("cpu"), 512) == torch.float32


def test_cpu_flags_decide_native_bf16(monkeypatch):
    monkeypatch.setattr(device, "_cpuinfo", lambda: "model name : X\nflags : fpu sse2 avx2 fma avx512f avx512_bf16\n")
    assert device.cpu_supports_bf16() and "avx512_bf16" in device.cpu_flags()
    monkeypatch.setattr(device, "_cpuinfo", lambda: "model name : X\nflags : fpu sse2 avx2 fma\n")
    assert not device.cpu_supports_bf16() and device.cpu_flags() == ["avx2", "fma"]


def test_generation_stays_fp32_on_cpu(bf16):
    bf16(True)
    rt = setup_runtime("cpu", "auto", 512)
    assert rt.dtype == torch.bfloat16
    with rt.generation_autocast():
        assert not torch.is_autocast_enabled("cpu")
    with rt.autocast():
        assert torch.is_autocast_enabled("cpu")
