import numpy as np
import pytest
import torch
import torch.nn as nn

from speedrun.config import AdditionData, ModelConfig, OptimConfig
from speedrun.device import setup_runtime
from speedrun.model import GPT, generate
from speedrun.optim import build_optimizer
from speedrun.tasks.addition import ANSWER_LEN, N, PROMPT_LEN, TOKENIZER, AdditionTask, carries, read_answer

RT = setup_runtime("cpu", "float32")


def carries_oracle(a: int, b: int) -> int:
    count = carry = 0
    for _ in range(3):
        carry = int(a % 10 + b % 10 + carry >= 10)
        count += carry
        a, b = a // 10, b // 10
    return count


@pytest.fixture(scope="module")
def task():
    return AdditionTask(AdditionData(answer="reversed"), seed=0)


@pytest.fixture(scope="module")
def plain_task():
    return AdditionTask(AdditionData(answer="plain", balance_carries=False, train_pairs=20_000), seed=0)


class Oracle(nn.Module):
    """A stand-in model that reads a and b from its input and predicts the true
    next token, except on pairs in `wrong`, where it adds 1 to the first answer
    digit. It keeps the tokens it has seen in the cache, so prefix sharing and
    KV-cached generation drive it exactly as they drive the GPT."""

    def __init__(self, answer: str, wrong=()):
        super().__init__()
        self.answer, self.wrong = answer, set(wrong)
        self.cfg = ModelConfig(block_size=PROMPT_LEN + ANSWER_LEN)

    def new_cache(self):
        return [[]]

    def forward(self, idx, targets=None, cache=None, start=0, last=0):
        if cache is not None:
            if cache[0]:
                idx = torch.cat((cache[0][0], idx), dim=1)
            cache[0][:] = [idx]
        B, T = idx.shape
        logits = torch.zeros(B, T, TOKENIZER.vocab_size)
        if T >= PROMPT_LEN:
            d = idx[:, :7].long()
            a = d[:, 0] * 100 + d[:, 1] * 10 + d[:, 2]
            b = d[:, 4] * 100 + d[:, 5] * 10 + d[:, 6]
            s = a + b
            digits = torch.stack([s // 1000, s // 100 % 10, s // 10 % 10, s % 10], dim=1)
            if self.answer == "reversed":
                digits = digits.flip(1)
            for wa, wb in self.wrong:
                hit = (a == wa) & (b == wb)
                digits[hit, 0] = (digits[hit, 0] + 1) % 10
            for pos in range(PROMPT_LEN - 1, min(T, PROMPT_LEN - 1 + ANSWER_LEN)):
                logits[torch.arange(B), pos, digits[:, pos - PROMPT_LEN + 1]] = 1.0
        return logits[:, -last:] if last else logits


def test_tokenizer_round_trip_and_size():
    assert TOKENIZER.vocab_size == 13
    text = "123+456=9750\n"
    assert TOKENIZER.decode(TOKENIZER.encode(text)) == text


def test_carries_match_oracle():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, N, 3000), rng.integers(0, N, 3000)
    extra = np.array([[999, 1], [999, 999], [0, 0], [500, 500], [455, 545], [99, 1], [9, 990]])
    a, b = np.concatenate([a, extra[:, 0]]), np.concatenate([b, extra[:, 1]])
    got = carries(a, b)
    assert [carries_oracle(x, y) for x, y in zip(a, b)] == got.tolist()
    assert carries(np.array([999]), np.array([1]))[0] == 3


def test_sequences_in_both_formats(task, plain_task):
    pair = 123 * N + 456
    assert TOKENIZER.decode(task.tokens[pair]) == "123+456=9750\n"
    assert TOKENIZER.decode(plain_task.tokens[pair]) == "123+456=0579\n"
    assert read_answer("9750", "reversed") == 579 and read_answer("0579", "plain") == 579
    assert read_answer("12a4", "plain") is None


def test_answer_only_loss_masks_prompt(task):
    x, y = task.inputs_targets(torch.tensor([5 * N + 7]))
    assert x.shape == (1, PROMPT_LEN + ANSWER_LEN) and y.shape == x.shape
    assert (y[0, : PROMPT_LEN - 1] == -100).all() and (y[0, PROMPT_LEN - 1:] >= 0).all()


def test_balanced_batches_cover_carry_counts_evenly(task):
    x, _ = task.train_batch(8000, torch.Generator().manual_seed(0))
    digits = x[:, :7].numpy()
    a = digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]
    b = digits[:, 4] * 100 + digits[:, 5] * 10 + digits[:, 6]
    share = np.bincount(carries(a, b), minlength=4) / len(a)
    assert np.allclose(share, 0.25, atol=0.03)


def test_train_pool_and_validation_are_disjoint(plain_task):
    assert len(plain_task.train_ids) == 18_000 and len(plain_task.val_ids) == 2_000
    assert not set(plain_task.train_ids.tolist()) & set(plain_task.val_ids.tolist())


@pytest.mark.parametrize("answer", ["reversed", "plain"])
def test_exhaustive_check_against_oracle(answer, task, plain_task):
    t = task if answer == "reversed" else plain_task
    perfect = t.check(Oracle(answer), RT)
    assert perfect["exact_match"] == 1.0 and perfect["evaluated"] == N * N and perfect["failures"] == []
    wrong = [(999, 1), (0, 0), (123, 877), (500, 499)]
    result = t.check(Oracle(answer, wrong), RT)
    assert result["exact_match"] == pytest.approx(1 - len(wrong) / N ** 2)
    assert result["exact_match"] < 1.0
    assert {f["prompt"] for f in result["failures"]} == {f"{a:03d}+{b:03d}=" for a, b in wrong}
    by_prompt = {f["prompt"]: f for f in result["failures"]}
    assert by_prompt["999+001="]["expected"] == 1000 and by_prompt["999+001="]["model_answer"] != 1000
    assert result["exact_match_by_carries"]["3"] < 1.0 and result["exact_match_by_carries"]["0"] < 1.0
    assert result["exact_match_by_carries"]["1"] == 1.0


@pytest.fixture(scope="module")
def trained_model(task):
    """A tiny GPT trained briefly: right on some pairs and wrong on others."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=12, vocab_size=13))
    opt = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.0))
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        x, y = task.train_batch(128, g)
        model(x, y)[1].backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_greedy_decoding_agrees_with_teacher_forcing(task, trained_model):
    ids = torch.randperm(N * N, generator=torch.Generator().manual_seed(1))[:3000]
    teacher = task.correct(trained_model, RT, ids)
    assert 0.02 < teacher.float().mean() < 0.98, "the check needs a model that is partly right"
    prompts = task.tokens[ids, :PROMPT_LEN]
    for use_cache in (True, False):
        out = generate(trained_model, prompts, ANSWER_LEN, use_cache=use_cache)
        greedy = (out[:, PROMPT_LEN:] == task.tokens[ids, PROMPT_LEN:PROMPT_LEN + ANSWER_LEN]).all(-1)
        assert torch.equal(greedy, teacher)


def test_prefix_sharing_equals_plain_teacher_forcing(task, trained_model):
    plain = task.correct(trained_model, RT, torch.arange(7 * N))
    shared = task.correct_all(trained_model, RT, torch.arange(7))
    assert shared.shape == plain.shape and torch.equal(shared, plain)


class TrainableOracle(Oracle):
    """An Oracle the trainer can drive: one dummy weight with a loss, and what MFU counting reads."""

    def __init__(self, answer: str):
        super().__init__(answer)
        self.w = nn.Parameter(torch.zeros(()))
        self.blocks, self.head = nn.ModuleList(), nn.Linear(1, 1, bias=False)

    def num_params(self) -> int:
        return 1

    def forward(self, idx, targets=None, cache=None, start=0, last=0):
        logits = super().forward(idx, None, cache, start, last)
        return logits if targets is None else (logits, self.w ** 2 + 1.0)


def test_time_to_verified_counts_a_failed_exhaustive_check(tmp_path, monkeypatch):
    import json
    import time

    from speedrun import trainer as trainer_module
    from speedrun.config import load_config
    from speedrun.rundir import RunDir

    real, failed = AdditionTask.correct_all, []

    def fail_first_full_check(self, model, rt, a_values=None, until_wrong=False):
        verdicts = real(self, model, rt, a_values, until_wrong)
        if until_wrong and not failed:  # force one failure, and make it cost a visible second
            failed.append(1)
            time.sleep(1.0)
            verdicts[123 * N + 456] = 0
        return verdicts

    monkeypatch.setattr(AdditionTask, "correct_all", fail_first_full_check)
    monkeypatch.setattr(trainer_module, "GPT", lambda model_cfg: TrainableOracle("reversed"))
    cfg = load_config("addition", ["train.steps=5", "train.eval_every=1", "train.log_every=1"])
    run = RunDir.create(cfg, str(tmp_path / "run"))
    summary = trainer_module.Trainer(cfg, run, RT, progress=False).train()
    records = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    full = [r for r in records if "exhaustive_checked" in r]
    assert len(full) == 2 and not full[0].get("done") and full[1]["verified"]
    assert summary["stopped_by"] == "task_done" and summary["steps"] == 2
    assert summary["metrics"]["verified"] and summary["metrics"]["exact_match"] == 1.0
    # the failed check is on the clock that decides when to stop
    assert summary["eval_seconds"] >= 1.0
    assert summary["time_to_verified"] >= 1.0 + summary["train_seconds"]
    assert summary["wall_seconds"] >= summary["time_to_verified"]


def test_unseen_pairs_are_the_pairs_never_drawn(task):
    fresh = AdditionTask(AdditionData(answer="reversed"), seed=0)
    x, _ = fresh.train_batch(500, torch.Generator().manual_seed(0))
    a = x[:, 0] * 100 + x[:, 1] * 10 + x[:, 2]
    b = x[:, 4] * 100 + x[:, 5] * 10 + x[:, 6]
    assert fresh.seen.sum() == len(set((a * N + b).tolist()))
    result = fresh.check(Oracle("reversed", wrong=[(int(a[0]), int(b[0]))]), RT)
    assert result["pairs_seen_in_training"] == int(fresh.seen.sum())
    assert result["exact_match_unseen_pairs"] == 1.0 and result["wrong"] == 1 and not result["verified"]
