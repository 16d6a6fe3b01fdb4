import torch

from speedrun.config import ModelConfig
from speedrun.flops import flops_per_token, measure_peak, peak_flops
from speedrun.model import GPT


def test_flops_per_token_by_hand():
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=10, mlp_ratio=4)
    model = GPT(cfg)
    # per block: qkv 16x48, proj 16x16, fc 16x64, proj 64x16, two LayerNorm weights of 16
    block = 16 * 48 + 16 * 16 + 16 * 64 + 64 * 16 + 2 * 16
    expected = 6 * (2 * block + 10 * 16) + 12 * 2 * 16 * 8
    assert flops_per_token(model, context=8) == expected
    untied = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=10, tie_embeddings=False))
    assert flops_per_token(untied, context=8) == expected  # the token table is a lookup either way


def test_peak_is_measured_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path))
    calls = []
    real = measure_peak

    def counting(device, dtype, size=256, trials=3):
        calls.append(dtype)
        return real(device, dtype, size=size, trials=trials)

    monkeypatch.setattr("speedrun.flops.measure_peak", counting)
    torch.manual_seed(0)
    expected_draw = torch.rand(3)
    torch.manual_seed(0)
    first = peak_flops(torch.device("cpu"), torch.float32)
    assert first > 1e8 and peak_flops(torch.device("cpu"), torch.float32) == first
    assert calls == [torch.float32]
    assert torch.equal(torch.rand(3), expected_draw)  # measuring did not move the global RNG
    peak_flops(torch.device("cpu"), torch.float32, refresh=True)
    assert len(calls) == 2 and (tmp_path / "peak_flops.json").is_file()
