import math
import os
import subprocess
import sys

import pytest
import torch

from speedrun.config import ModelConfig, OptimConfig
from speedrun.model import GPT
from speedrun.optim import NS_COEFFS, AdamW, build_optimizer, lr_factor, newton_schulz, param_groups, set_lr


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=7, bias=True))


@pytest.mark.parametrize("shape", [(32, 32), (64, 16), (16, 48)])
def test_newton_schulz_is_close_to_orthogonal(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    x = newton_schulz(g, dtype=torch.float32)
    singular = torch.linalg.svdvals(x)
    # The quintic iteration trades exactness for speed: singular values land in ~[0.7, 1.2].
    assert singular.min() > 0.6 and singular.max() < 1.25
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cosine = (x * (u @ vh)).sum() / (x.norm() * (u @ vh).norm())
    assert cosine > 0.95  # it points where the exact orthogonal factor U V^T points


def test_param_groups_adamw_decays_matrices_only():
    model = tiny_gpt()
    groups = param_groups(model, OptimConfig(name="adamw", weight_decay=0.1))
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.dim() >= 2), name
    assert all(g["kind"] == "adamw" for g in groups)


def test_param_groups_muon_takes_hidden_matrices_only():
    model = tiny_gpt()
    groups = param_groups(model, OptimConfig(name="muon"))
    muon = {id(p) for g in groups if g["kind"] == "muon" for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in muon) == (name.startswith("blocks.") and p.dim() == 2), name
    every = [p for g in groups for p in g["params"]]
    assert len(every) == len({id(p) for p in every}) == len(list(model.parameters()))


def test_muon_step_matches_direct_computation():
    model = tiny_gpt()
    cfg = OptimConfig(name="muon", muon_lr=0.05, muon_momentum=0.9, lr=0.0, weight_decay=0.0)
    opt = build_optimizer(model, cfg)
    w = model.blocks[0].mlp.fc.weight  # (64, 16): tall
    before = w.detach().clone()
    grads = []
    for _ in range(2):
        x = torch.randint(0, 7, (4, 8))
        model(x, x)[1].backward()
        grads.append(w.grad.detach().clone())
        opt.step()
        opt.zero_grad()
        if len(grads) == 1:
            after_one = w.detach().clone()
    # Step 1: buffer = (1-m) g1; update = lerp(g1, buffer, m)
    buf = (1 - 0.9) * grads[0]
    update = grads[0] + 0.9 * (buf - grads[0])
    expected = before - 0.05 * math.sqrt(64 / 16) * orthogonalise(update)
    torch.testing.assert_close(after_one, expected, atol=1e-5, rtol=1e-4)
    buf = 0.9 * buf + 0.1 * grads[1]
    update = grads[1] + 0.9 * (buf - grads[1])
    expected = after_one - 0.05 * 2 * orthogonalise(update)
    torch.testing.assert_close(w.detach(), expected, atol=1e-5, rtol=1e-4)


def orthogonalise(g: torch.Tensor) -> torch.Tensor:
    """The quintic Newton-Schulz iteration written out for a tall matrix."""
    a, b, c = NS_COEFFS
    x = g.T / (g.norm() + 1e-7)
    for _ in range(5):
        gram = x @ x.T
        x = a * x + b * gram @ x + c * gram @ gram @ x
    return x.T


def test_adamw_weights_move_and_lr_scales():
    model = tiny_gpt()
    opt = build_optimizer(model, OptimConfig(lr=1e-2))
    set_lr(opt, 0.5)
    assert all(g["lr"] == pytest.approx(0.5 * 1e-2) for g in opt.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randint(0, 7, (4, 8))
    model(x, x)[1].backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def adamw_pair():
    """The same tiny model twice, one under torch's AdamW, one under ours, same hyper-parameters."""
    models = [tiny_gpt(), tiny_gpt()]
    groups = [[dict(params=[p for p in m.parameters() if p.dim() >= 2], weight_decay=0.1),
               dict(params=[p for p in m.parameters() if p.dim() < 2], weight_decay=0.0)] for m in models]
    theirs = torch.optim.AdamW(groups[0], lr=3e-3, betas=(0.8, 0.95), eps=1e-8)
    ours = AdamW(groups[1], betas=(0.8, 0.95), eps=1e-8)
    for g in ours.param_groups:
        g["lr"] = 3e-3
    return models, theirs, ours


def train_both(models, optimizers, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x = torch.randint(0, 7, (4, 8), generator=g)
        for model, opt in zip(models, optimizers):
            for group in opt.param_groups:
                group["lr"] = 3e-3 * (1 - step / 10)  # a schedule, as set_lr applies one
            model(x, x)[1].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)


def test_adamw_is_torchs_adamw_update_for_update():
    models, theirs, ours = adamw_pair()
    train_both(models, [theirs, ours], 6, seed=0)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_adamw_resumes_from_torchs_state_dict_as_torch_would():
    """Checkpoints written when the trainer used torch's AdamW load into ours and continue alike."""
    models, theirs, ours = adamw_pair()
    train_both(models[:1], [theirs], 3, seed=0)
    models[1].load_state_dict(models[0].state_dict())
    ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict()["state"].keys() == theirs.state_dict()["state"].keys()
    train_both(models, [theirs, ours], 3, seed=1)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="other parameter groups"):
        ours.load_state_dict({"state": {}, "param_groups": theirs.state_dict()["param_groups"][:1]})


def test_training_does_not_import_torch_dynamo(tmp_path):
    """torch._dynamo costs 1.5 s to import on a CPU; a run that compiles nothing must not pay it."""
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40)
    code = ("import sys; from speedrun.cli import main; "
            f"code = main(['train', 'shakespeare-char', '--data', {str(corpus)!r}, '--out', {str(tmp_path / 'run')!r}, "
            "'--quiet', 'train.steps=4', 'train.eval_every=2', 'model.n_embd=16', 'model.block_size=16', "
            "'train.batch_size=4', 'data.sample_tokens=5']); "
            "assert code == 0; print('torch._dynamo' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "SPEEDRUN_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_schedules():
    cos = OptimConfig(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(cos, 0, 0.0) == pytest.approx(1 / 11)
    assert lr_factor(cos, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(cos, 50, 0.5) == pytest.approx(0.55)
    assert lr_factor(cos, 99, 1.0) == pytest.approx(0.1)
    wsd = OptimConfig(schedule="wsd", warmup_steps=0, warmdown_fraction=0.2, min_lr_ratio=0.0)
    assert lr_factor(wsd, 5, 0.5) == 1.0 and lr_factor(wsd, 5, 0.8) == 1.0
    assert lr_factor(wsd, 5, 0.9) == pytest.approx(0.5) and lr_factor(wsd, 5, 1.0) == pytest.approx(0.0)
    const = OptimConfig(schedule="constant")
    assert lr_factor(const, 5, 0.99) == 1.0


@pytest.mark.parametrize("native", [False, True])
def test_newton_schulz_dtype_follows_the_bf16_decision(native, monkeypatch):
    """Muon orthogonalises in bf16 only where the run's dtype is bf16, which `auto` picks only
    on hardware with native bf16; small matrices stay fp32 on a CPU either way."""
    from speedrun import device, optim
    from speedrun.config import ModelConfig
    from speedrun.device import setup_runtime
    from speedrun.model import GPT

    monkeypatch.setattr(device, "native_bf16", lambda device_type: native)
    rt = setup_runtime("cpu", "auto", 256)
    assert rt.dtype == (torch.bfloat16 if native else torch.float32)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=256, block_size=8, vocab_size=11))
    seen = []
    real = optim.newton_schulz

    def spy(g, *args, dtype, **kw):
        seen.append((tuple(g.shape[1:]), dtype))
        return real(g, *args, dtype=dtype, **kw)

    monkeypatch.setattr(optim, "newton_schulz", spy)
    opt = build_optimizer(model, OptimConfig(name="muon"), rt.dtype)
    x = torch.randint(0, 11, (2, 8))
    model(x, x)[1].backward()
    opt.step()
    assert seen and all(d == (torch.bfloat16 if native else torch.float32) for _, d in seen)
    small = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=11))
    seen.clear()
    opt = build_optimizer(small, OptimConfig(name="muon"), torch.bfloat16)
    small(x, x)[1].backward()
    opt.step()
    assert seen and all(d == torch.float32 for _, d in seen)
