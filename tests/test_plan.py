"""The machine a user grows into: the depth dial, token and batch budgets, learning rates that
scale with width, the GPU-scale recipes at tiny depth, and `speedrun plan`."""

import json
import math

import pytest
import torch

from speedrun.cli import main
from speedrun.config import ConfigError, ModelConfig, OptimConfig, load_config
from speedrun.model import GPT
from speedrun.optim import param_groups
from speedrun.plan import budget_steps, make_plan, model_sizes


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Plans read the MFU runs remembered in the cache: never the user's."""
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))


def plan_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------- the dial

@pytest.mark.parametrize("depth, shape", [(20, (20, 1280, 10)), (12, (12, 768, 6)), (2, (2, 128, 1)),
                                          (5, (5, 320, 2))])
def test_depth_gives_nanochats_shape(depth, shape):
    m = load_config("shakespeare-bpe", [f"model.depth={depth}"]).model
    assert (m.n_layer, m.n_embd, m.n_head) == shape and m.n_embd % m.n_head == 0


def test_shape_keys_beside_the_dial_win_over_it():
    m = load_config("shakespeare-bpe", ["model.depth=3", "model.n_head=3"]).model
    assert (m.n_layer, m.n_embd, m.n_head) == (3, 192, 3)
    m = load_config("base-d20", ["model.n_embd=640"]).model  # the recipe's dial, an explicit width
    assert (m.n_layer, m.n_embd, m.n_head) == (20, 640, 5)
    m = load_config("shakespeare-bpe").model  # no dial: the recipe's own shape
    assert (m.depth, m.n_layer, m.n_embd) == (0, 3, 128)


def test_batch_tokens_sets_grad_accum_and_clashes_are_errors():
    t = load_config("base-d20").train
    assert t.batch_tokens == 524288 and t.grad_accum == 524288 // (32 * 2048) == 8
    assert load_config("base-d20", ["train.batch_size=16"]).train.grad_accum == 16
    with pytest.raises(ConfigError, match="must be a multiple of train.batch_size x model.block_size"):
        load_config("base-d20", ["train.batch_tokens=1000"])
    with pytest.raises(ConfigError, match="disagrees with train.batch_tokens"):
        load_config("base-d20", ["train.grad_accum=3"])
    with pytest.raises(ConfigError, match="positive whole number"):
        load_config("shakespeare-bpe", ["model.depth=-2"])
    with pytest.raises(ConfigError, match="token budget once"):
        load_config("base-d20", ["train.tokens=1000"])


def test_token_budget_sets_the_steps():
    t = load_config("base-d20").train
    assert budget_steps(t, 1000, 100) == math.ceil(20 * 1000 / 100)
    t = load_config("gpt2-124m").train
    assert budget_steps(t, 1, 524288) == math.ceil(10e9 / 524288)
    assert budget_steps(load_config("shakespeare-bpe").train, 10**6, 100) is None


def test_adamw_rates_scale_with_width_and_the_embedding_has_its_own():
    def rates(n_embd, tie, **optim):
        model = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=n_embd, vocab_size=50, tie_embeddings=tie))
        groups = param_groups(model, OptimConfig(name="muon", lr=0.004, **optim))
        return {(g["kind"], len(g["params"])): g["peak_lr"] for g in groups}, groups, model

    plain, _, _ = rates(192, False)
    assert {lr for (kind, _), lr in plain.items() if kind == "adamw"} == {0.004}
    scaled, groups, model = rates(192, False, embed_lr=0.2, lr_ref_width=768)
    by_param = {id(p): g["peak_lr"] for g in groups for p in g["params"]}
    assert by_param[id(model.tok_emb.weight)] == pytest.approx(0.2 * 2)  # sqrt(768 / 192) = 2
    assert by_param[id(model.head.weight)] == pytest.approx(0.004 * 2)
    assert by_param[id(model.blocks[0].attn.qkv.weight)] == 0.02  # Muon's is not scaled
    _, groups, model = rates(192, True, embed_lr=0.2)  # a tied table is the head's: optim.lr
    assert {g["peak_lr"] for g in groups if any(p is model.head.weight for p in g["params"])} == {0.004}


def test_checkpointed_activations_give_the_same_gradients():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=40, pos="rope", dropout=0.0)
    plain = GPT(cfg)
    ckpt = GPT(ModelConfig(**{**cfg.__dict__, "checkpoint_activations": True}))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randint(0, 40, (3, 16))
    for m in (plain, ckpt):
        m.train()
        m(x, x)[1].backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


# ---------------------------------------------------------------- the recipes at tiny depth

@pytest.mark.parametrize("recipe, shape, budget", [
    ("base-d20", ["model.depth=2", "model.block_size=32"], ["train.tokens_per_param=0.005"]),
    ("gpt2-124m", ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32"],
     ["train.tokens=1200"]),
])
def test_gpu_recipes_train_at_tiny_size_on_a_cpu(recipe, shape, budget, tmp_path, line_corpus):
    out = tmp_path / "run"
    args = ["train", recipe, *shape, *budget, "train.batch_size=4", "train.batch_tokens=256", "train.eval_every=0",
            "data.vocab_size=300", "data.eval_tokens=512", "data.sample_tokens=0", "data.val_fraction=0.1",
            "data.doc_per_line=true", "device=cpu", "--data", str(line_corpus), "--out", str(out), "--quiet"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    tokens = 1200 if recipe == "gpt2-124m" else round(0.005 * summary["params"])
    assert summary["steps"] == math.ceil(tokens / 256) > 1 and summary["stopped_by"] == "steps"
    assert summary["tokens"] == summary["steps"] * 256 and math.isfinite(summary["metrics"]["val_loss"])
    assert summary["metrics"]["val_tokens"] <= 512


# ---------------------------------------------------------------- speedrun plan

def test_plan_of_nanochats_d20_on_8_h100s_matches_the_seed_run(capsys):
    p = plan_json(capsys, "base-d20", "--gpus", "8", "--gpu", "h100", "--mfu", "0.5")
    assert abs(p["parameters"] / 561e6 - 1) < 0.02
    assert abs(p["tokens"] / 11.2e9 - 1) < 0.01 and p["steps"] == 21400
    assert 3.5e19 <= p["flops"] <= 4.5e19
    assert 2.3 <= p["seconds"] / 3600 <= 3.2
    assert p["device_batch"] == 32 and p["grad_accum"] == 1  # 8 GPUs x 32 x 2,048 = 524,288
    for key in ("memory_bytes_per_device", "largest_device_batch", "usd"):
        assert p[key] > 0
    # nanochat's FLOPs per token, by hand: 6 x (all but the input table) + 12 x layers x width x context
    assert p["flops_per_token"] == 6 * (p["parameters"] - 65536 * 1280) + 12 * 20 * 1280 * 2048


def test_plan_of_gpt2_small(capsys):
    p = plan_json(capsys, "gpt2-124m", "--gpu", "h100")
    assert abs(p["parameters"] / 124e6 - 1) < 0.02 and p["grad_accum"] == 8
    assert p["mfu_from"].startswith("assumed")
    one, eight = p["seconds"], plan_json(capsys, "gpt2-124m", "--gpu", "h100", "--gpus", "8")["seconds"]
    assert 7 < one / eight < 8.5  # the same FLOPs on 8 devices, setup and compile aside


def test_plan_memory_checkpointing_and_the_largest_batch():
    cfg = load_config("base-d20")
    plan = make_plan(cfg, gpus=8, gpu="h100", mfu=0.5)
    total, ckpt = sum(plan.memory.values()), sum(plan.memory_checkpointed.values())
    assert ckpt < total and plan.largest_batch_checkpointed > plan.largest_batch >= 1
    assert plan.memory["ddp_buckets"] > 0 and make_plan(cfg, gpus=1, gpu="h100").memory["ddp_buckets"] == 0
    small = make_plan(cfg, gpus=8, gpu="4090", mfu=0.5)  # 24 GiB: batch 32 does not fit
    assert small.largest_batch < 32 and any("does not fit" in n for n in small.notes)
    assert not any("does not fit" in n for n in plan.notes)


def test_plan_parameters_are_the_models(tmp_path):
    cfg = load_config("shakespeare-bpe", ["model.vocab_size=1024"])
    sizes = model_sizes(cfg, 1024)
    assert sizes.params == GPT(cfg.model).num_params()


def test_plan_on_a_cpu_uses_the_prepared_vocabulary_and_what_runs_reached(tmp_path, line_corpus, capsys):
    from speedrun.flops import remember_mfu
    from speedrun.plan import model_sizes

    args = ["shakespeare-bpe", "data.vocab_size=300", "data.doc_per_line=true", "--data", str(line_corpus)]
    before = plan_json(capsys, *args)
    assert before["vocab_from"] == "data.vocab_size" and before["mfu_from"].startswith("assumed")
    assert main(["prepare", str(line_corpus), "shakespeare-bpe", "data.vocab_size=300",
                 "data.doc_per_line=true", "--quiet"]) == 0
    cfg = load_config("shakespeare-bpe", ["data.vocab_size=300"])
    remember_mfu(torch.device("cpu"), torch.float32, model_sizes(cfg, 300).flops_per_token, 0.25,
                 "shakespeare-bpe", 8192, 1e11)
    after = plan_json(capsys, *args)
    assert after["vocab_from"] == "the prepared dataset" and after["vocab_size"] <= 300
    assert after["mfu"] == 0.25 and "shakespeare-bpe" in after["mfu_from"]
    # a time budget sets the steps: the budget less setup, at the planned step time
    assert after["steps_from"].startswith("train.time_budget") and after["steps"] > 0
    assert after["seconds"] == pytest.approx(120, rel=0.2)


@pytest.mark.parametrize("args, message", [
    (["plan", "base-d20", "--gpus", "0"], "at least 1 device"),
    (["plan", "base-d20", "--mfu", "1.5"], "between 0 and 1"),
    (["plan", "base-d20", "model.depth=0.5"], "positive whole number"),
])
def test_plan_errors_are_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_gpu_plan_uses_what_a_run_on_that_gpu_reached(tmp_path, monkeypatch, capsys):
    """A run on an H100 remembers its MFU against the measured matmul peak; a plan for
    --gpu h100 then uses it, restated against the data sheet's peak, instead of the assumed 40%."""
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    assert plan_json(capsys, "gpt2-124m", "--gpu", "h100")["mfu_from"].startswith("assumed")
    (tmp_path / "cache").mkdir()
    fpt = model_sizes(load_config("gpt2-124m"), 50304).flops_per_token
    key = "NVIDIA H100 80GB HBM3|cuda|bfloat16|threads=8"
    entry = {"recipe": "gpt2-124m", "flops_per_token": fpt, "tokens_per_step": 524288, "mfu": 0.5,
             "peak_flops": 700e12, "measured": "2026-12-06 12:00:00"}
    (tmp_path / "cache" / "mfu.json").write_text(json.dumps({key: [entry]}))
    p = plan_json(capsys, "gpt2-124m", "--gpu", "h100")
    assert p["mfu"] == pytest.approx(0.5 * 700e12 / 989e12) and "H100" in p["mfu_from"]
    assert plan_json(capsys, "gpt2-124m", "--gpu", "a100")["mfu_from"].startswith("assumed")  # not an A100's


def test_a_finished_run_remembers_its_mfu_for_the_plans(tmp_path, line_corpus, monkeypatch):
    from speedrun import trainer as trainer_module
    from speedrun.flops import known_mfu

    monkeypatch.setattr(trainer_module, "MFU_WORTH_REMEMBERING", 0.0)  # the tiny run trains for under 5 s
    out = tmp_path / "run"
    assert main(["train", "shakespeare-char", "model.n_layer=1", "model.n_embd=16", "model.n_head=2",
                 "model.block_size=16", "train.steps=3", "train.batch_size=4", "data.sample_tokens=0",
                 "dtype=float32", "--data", str(line_corpus), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    found = known_mfu(torch.device("cpu"), torch.float32, summary["flops_per_token"])
    assert found["recipe"] == "shakespeare-char" and found["mfu"] == pytest.approx(summary["mfu"])
    assert found["peak_flops"] == summary["peak_flops"]
