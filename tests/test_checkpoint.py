import os

import pytest
import torch

from speedrun.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from speedrun.config import ModelConfig, OptimConfig
from speedrun.model import GPT
from speedrun.optim import build_optimizer


def trained_state():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=7))
    opt = build_optimizer(model, OptimConfig(name="muon"))
    x = torch.randint(0, 7, (4, 8))
    model(x, x)[1].backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "step": 1, "rng": torch.get_rng_state(),
             "config": {"name": "x", "nested": {"lr": 0.1, "flag": True}}, "none": None}
    return model, opt, state


def test_round_trip(tmp_path):
    model, opt, state = trained_state()
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model.state_dict(), state)
    model_state, loaded = load_checkpoint(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(model_state[name], tensor), name
    assert loaded["step"] == 1 and loaded["config"] == state["config"] and loaded["none"] is None
    assert torch.equal(loaded["rng"], state["rng"])
    fresh_model, fresh_opt, _ = trained_state()
    fresh_opt.load_state_dict(loaded["optimizer"])
    assert str(fresh_opt.state_dict()) == str(opt.state_dict())


def test_truncated_file_is_named(tmp_path):
    model, _, state = trained_state()
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model.state_dict(), state)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(path)


def test_flipped_byte_fails_checksum(tmp_path):
    model, _, state = trained_state()
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model.state_dict(), state)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the tensor data, past the header
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_crash_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, _, state = trained_state()
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model.state_dict(), state)
    good = path.read_bytes()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with torch.no_grad():
        model.tok_emb.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model.state_dict(), {**state, "step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert load_checkpoint(path)[1]["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]  # no temporary left behind


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")
