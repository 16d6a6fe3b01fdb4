"""The GPU paths, on a CUDA device: bf16 autocast, SDPA and the KV cache, torch.compile, a hard
kill and resume, the optimizers, DDP over NCCL and the clocks. Skipped without a GPU; `pytest -m
cuda` runs them alone (`python -m benchmarks gpu` does, on one H100, in about two minutes)."""

import copy
import json
import math
import socket
import subprocess
import sys
import time

import pytest
import torch
from test_faults import ARGS as FAULT_ARGS
from test_faults import killed_after_first_checkpoint, records
from test_model import VARIANTS, tiny

from speedrun.clock import Clock
from speedrun.config import ModelConfig, OptimConfig, load_config
from speedrun.device import setup_runtime
from speedrun.model import GPT, Attention, generate
from speedrun.optim import build_optimizer
from speedrun.rundir import RunDir
from speedrun.trainer import Trainer

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")
TINY = ["device=cuda", "model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=32",
        "train.batch_size=16", "train.log_every=1", "train.eval_every=0", "data.sample_tokens=0",
        "data.tokenizer=char", "train.tensorboard=false"]


def make_trainer(tmp_path, corpus, dtype, *overrides, name="run"):
    cfg = load_config("shakespeare-char", TINY + [f"dtype={dtype}", f"data.source={json.dumps(str(corpus))}",
                                                  *overrides])
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.model.n_embd)
    return Trainer(cfg, RunDir.create(cfg, str(tmp_path / name)), rt, progress=False)


def step_losses(run) -> dict:
    return {r["step"]: r["loss"] for r in records(run) if "loss" in r}


@pytest.fixture
def fp32_matmuls():
    """fp32 matmuls in full fp32: setup_runtime turns TF32 on for training, and TF32's 10-bit
    mantissa would blur a comparison meant to be exact to fp32's rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# --- bf16 autocast -------------------------------------------------------------
def test_bf16_autocast_trains_on_the_gpu(tmp_path, line_corpus):
    t = make_trainer(tmp_path, line_corpus, "bfloat16", "train.steps=30")
    assert t.rt.dtype == torch.bfloat16 and next(t.model.parameters()).is_cuda
    matmul_outputs = []
    t.model.blocks[0].mlp.fc.register_forward_hook(lambda m, args, out: matmul_outputs.append(out.dtype))
    summary = t.train()
    losses = [loss for _, loss in sorted(step_losses(t.run.path).items())]
    assert len(losses) == 30 and all(map(math.isfinite, losses))
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]  # 3.7 at the start, 0.3 at the end on a CPU
    # the matmuls ran in bf16 (training and evaluation); the weights stayed fp32
    assert set(matmul_outputs) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    assert summary["dtype"] == "bfloat16" and summary["device"].startswith("cuda")
    assert math.isfinite(summary["metrics"]["val_loss"])


def test_a_text_run_samples_text_on_the_gpu(tmp_path, line_corpus):
    """Every full evaluation of a text run samples text with a seeded generator, which must draw
    on the device the model's logits are on."""
    t = make_trainer(tmp_path, line_corpus, "bfloat16", "train.steps=5", "data.sample_tokens=16")
    t.train()
    assert "--- step 5 (final) ---" in (t.run.path / "samples.txt").read_text()


# --- attention and the KV cache --------------------------------------------------
def naive_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Causal self-attention written out: scores, -inf above the diagonal, softmax, weighted sum."""
    B, T, C = x.shape
    q, k, v = attn.qkv(x).view(B, T, 3, attn.n_head, attn.head_dim).permute(2, 0, 3, 1, 4)  # (B, heads, T, hd)
    scores = q @ k.transpose(-2, -1) / attn.head_dim ** 0.5
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
    weights = scores.masked_fill(future, float("-inf")).softmax(-1)
    return attn.proj((weights @ v).transpose(1, 2).reshape(B, T, C))


def test_sdpa_attention_equals_naive_masked_attention(fp32_matmuls):
    """The model's attention (SDPA with is_causal) against the formula, in fp32 and under bf16
    autocast (flash attention: head size 64, bf16); a mask off by one or missing is off by O(1)."""
    torch.manual_seed(0)
    attn = Attention(ModelConfig(n_layer=1, n_head=4, n_embd=256, block_size=256)).to(CUDA).eval()
    for p in attn.parameters():  # weights that make the scores, and so the mask, matter
        torch.nn.init.normal_(p, std=256 ** -0.5)
    x = torch.randn(2, 256, 256, device=CUDA)
    with torch.no_grad():
        expected = naive_attention(attn, x)
        torch.testing.assert_close(attn(x, None, None, 0), expected, atol=1e-4, rtol=1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fast = attn(x, None, None, 0)
        assert fast.dtype == torch.bfloat16
        torch.testing.assert_close(fast.float(), expected, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("kw", VARIANTS)
def test_kv_cache_generation_equals_full_recompute_on_the_gpu(kw, fp32_matmuls):
    model = tiny(**kw).to(CUDA)
    prompt = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(0)).to(CUDA)
    with_cache = generate(model, prompt, 40, use_cache=True)  # past block_size (24): the cache is rebuilt
    assert with_cache.shape == (3, 45) and torch.equal(with_cache, generate(model, prompt, 40, use_cache=False))
    # under bf16 autocast (as generation runs on a GPU) the cached chunks' logits stay within bf16's rounding
    idx = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(1)).to(CUDA)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        full = model(idx).float()
        cache = model.new_cache()
        chunked = torch.cat((model(idx[:, :7], cache=cache), model(idx[:, 7:], cache=cache, start=7)), dim=1)
    torch.testing.assert_close(chunked.float(), full, atol=2e-2 * full.abs().max().item(), rtol=0)


# --- torch.compile ---------------------------------------------------------------
@pytest.mark.parametrize("dtype, rel", [("float32", 1e-4), ("bfloat16", 1e-2)])
def test_compiled_training_step_gives_eager_losses(tmp_path, line_corpus, dtype, rel):
    losses = {}
    for compiled in (False, True):
        t = make_trainer(tmp_path, line_corpus, dtype, "model.n_layer=1", "train.steps=10",
                         f"train.compile={str(compiled).lower()}", name=f"compiled-{compiled}")
        assert t.train()["compiled"] == compiled
        losses[compiled] = step_losses(t.run.path)
    assert sorted(losses[True]) == sorted(losses[False]) == list(range(1, 11))
    for step, loss in losses[False].items():
        assert losses[True][step] == pytest.approx(loss, rel=rel), step


# --- a hard kill, then a resume ------------------------------------------------------
# Every kernel deterministic (flash attention's backward is not, by default), so that two
# processes given the same inputs compute the same bits.
DETERMINISTIC = ("import sys, torch; torch.use_deterministic_algorithms(True); "
                 "from speedrun.cli import main; sys.exit(main(sys.argv[1:]))")


def speedrun(*args):
    return [sys.executable, "-c", DETERMINISTIC, *args]


def test_sigkill_then_resume_on_the_gpu_matches_uninterrupted(tmp_path, line_corpus, monkeypatch):
    """tests/test_faults.py's check, in bf16 on the GPU: the checkpoint carries the CUDA RNG
    (dropout draws from it) and the optimizer state back onto the device."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic mode
    args = [*FAULT_ARGS, "device=cuda", "dtype=bfloat16"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(speedrun("train", "shakespeare-char", "--data", str(line_corpus), "--out", str(whole),
                                   "--quiet", *args), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    killed_after_first_checkpoint(speedrun("train", "shakespeare-char", "--data", str(line_corpus), "--out",
                                           str(killed), "--quiet", *args), killed)

    resumed = subprocess.run(speedrun("train", "--resume", str(killed)), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step" in (killed / "train.log").read_text()
    a, b = json.loads((whole / "summary.json").read_text()), json.loads((killed / "summary.json").read_text())
    assert b["device"].startswith("cuda") and b["dtype"] == "bfloat16"
    assert b["metrics"]["val_loss"] == a["metrics"]["val_loss"] and b["steps"] == a["steps"] == 150
    losses = lambda run: [(r["step"], r["loss"]) for r in records(run) if "loss" in r]
    assert losses(killed) == losses(whole)  # every logged step, once, with the same loss


# --- the optimizers ----------------------------------------------------------------
def twin_models():
    torch.manual_seed(0)
    cpu = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=16, vocab_size=50, bias=True))
    return cpu, copy.deepcopy(cpu).to(CUDA)


def step_both(models, optimizers, steps=5):
    """The same random gradients into both models, then a step of each optimizer: the optimizers
    are compared alone, not the forward and backward passes that would make the gradients."""
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p_cpu, p_gpu in zip(*(m.parameters() for m in models)):
            grad = torch.randn(p_cpu.shape, generator=g)
            p_cpu.grad, p_gpu.grad = grad, grad.to(CUDA)
        for o in optimizers:
            o.step()


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_optimizer_steps_on_the_gpu_as_on_the_cpu(name, fp32_matmuls):
    """optim.py's AdamW and Muon (plain per-tensor loops and batched Newton-Schulz matmuls, no
    fused or foreach kernels) on CUDA tensors, fp32, against the same steps on the CPU."""
    cfg = OptimConfig(name=name, lr=1e-2, muon_lr=0.05, weight_decay=0.1)
    models = twin_models()
    step_both(models, [build_optimizer(m, cfg) for m in models])
    for (where, cpu), gpu in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-4, msg=where)


def test_muon_newton_schulz_in_bf16_on_the_gpu_stays_near_fp32():
    """A bf16 run's Muon orthogonalises in bf16 on a GPU (Runtime.dtype); five steps of it stay
    within bf16's rounding of the fp32 steps."""
    cfg = OptimConfig(name="muon", lr=1e-2, muon_lr=0.05)
    models = twin_models()
    step_both(models, [build_optimizer(models[0], cfg), build_optimizer(models[1], cfg, torch.bfloat16)])
    for (where, cpu), gpu in zip(models[0].named_parameters(), models[1].parameters()):
        assert gpu.dtype == torch.float32
        torch.testing.assert_close(gpu.cpu(), cpu, atol=5e-3, rtol=0, msg=where)


# --- DDP over NCCL ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank, port, corpus, out):
    """One process of a one-process NCCL group: 20 steps of the same run, plain and under DDP.
    (`speedrun train` under torchrun with one process runs without DDP, so the test wraps it.)"""
    import dataclasses

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from speedrun.model import GPT
    from speedrun.step import train_step
    from speedrun.tasks import build_task, model_config

    rt = setup_runtime("cuda", "bfloat16")
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=1)
    try:
        cfg = load_config("shakespeare-char", [*TINY, "train.grad_accum=2", f"data.source={json.dumps(corpus)}"])
        task = build_task(cfg)
        cfg = dataclasses.replace(cfg, model=model_config(cfg, task))
        result = {"backend": dist.get_backend()}
        for wrapped in (False, True):
            torch.manual_seed(0)
            model = GPT(cfg.model).to(rt.device)
            step_fn = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()]) if wrapped else model
            optimizer = build_optimizer(model, cfg.optim, rt.dtype)
            generator = torch.Generator().manual_seed(0)
            result["ddp" if wrapped else "plain"] = [
                train_step(step_fn, model, optimizer, task, cfg, rt, generator)[0].item() for _ in range(20)]
        total = torch.full((1,), 3.0, device=rt.device)
        dist.all_reduce(total)
        result["all_reduced"] = total.item()
        with open(out, "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_ddp_over_nccl_trains_in_one_process(tmp_path, line_corpus):
    out = tmp_path / "ddp.json"
    torch.multiprocessing.spawn(ddp_worker, args=(free_port(), str(line_corpus), str(out)), nprocs=1)
    result = json.loads(out.read_text())
    assert result["backend"] == "nccl" and result["all_reduced"] == 3.0
    plain, ddp = result["plain"], result["ddp"]
    assert all(map(math.isfinite, ddp)) and sum(ddp[-5:]) / 5 < sum(ddp[:5]) / 5
    assert ddp == pytest.approx(plain, rel=1e-2)  # one process: DDP's averaged gradients are its own


# --- the clocks ---------------------------------------------------------------------
def test_a_clock_waits_for_the_gpu_at_both_ends():
    a = torch.randn(8192, 8192, device=CUDA)
    a @ a  # cuBLAS's handle and workspace
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    launched = time.perf_counter()
    start.record()
    for _ in range(10):
        a @ a
    end.record()
    launched = time.perf_counter() - launched
    end.synchronize()
    gpu_seconds = start.elapsed_time(end) / 1000
    assert launched < 0.5 * gpu_seconds  # the launches return at once: a clock must wait for the work

    with Clock(CUDA) as clock:
        for _ in range(10):
            a @ a
    assert clock.seconds >= 0.9 * gpu_seconds
    for _ in range(10):  # work queued before a clock starts is not its work
        a @ a
    with Clock(CUDA) as idle:
        pass
    assert idle.seconds < 0.1 * gpu_seconds
