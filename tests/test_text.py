import json
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from speedrun.config import load_config
from speedrun.device import setup_runtime
from speedrun.rundir import RunDir
from speedrun.tasks.text import TextTask, eval_windows
from speedrun.trainer import Trainer

RT = setup_runtime("cpu", "float32")
TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", "train.batch_size=4",
        "train.log_every=1", "dtype=float32", "data.sample_tokens=8", "data.tokenizer=char"]


def make_trainer(tmp_path, corpus, *overrides, name="run"):
    cfg = load_config("shakespeare-char", TINY + [f"data.source={json.dumps(str(corpus))}", *overrides])
    run = RunDir.create(cfg, str(tmp_path / name))
    return Trainer(cfg, run, RT, progress=False)


@given(st.integers(2, 5000), st.integers(1, 300))
def test_eval_windows_cover_every_target_once(n_tokens, block):
    windows = eval_windows(n_tokens, block)
    covered = [start + 1 + i for start, length in windows for i in range(length)]
    assert covered == list(range(1, n_tokens))
    assert all(1 <= length <= block for _, length in windows)


class Uniform(nn.Module):
    """Equal logits for every token: the loss of each target is exactly ln(V)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.vocab)


def test_full_eval_scores_every_token_and_bpb_by_hand(corpus):
    cfg = load_config("shakespeare-char", TINY + [f"data.source={json.dumps(str(corpus))}"]).data
    task = TextTask(cfg, block_size=16, seed=0)
    n_val = len(task.val_tokens)
    assert (n_val - 1) % (16 * 64) != 0  # the tail is a partial window and a partial batch
    vocab = task.tokenizer.vocab_size
    result = task.full_eval(Uniform(vocab), RT)
    assert result["val_tokens"] == n_val - 1
    assert result["val_loss"] == pytest.approx(math.log(vocab))
    targets = task.val_tokens[1:]
    text = "".join(task.tokenizer.decode([t]) for t in targets if t != task.tokenizer.eot_id)
    n_text = sum(1 for t in targets if t != task.tokenizer.eot_id)
    expected_bpb = n_text * math.log2(vocab) / len(text.encode("utf-8"))
    assert "é" in text or "ï" in text  # multi-byte characters make bytes != characters
    assert result["val_bpb"] == pytest.approx(expected_bpb)


def test_first_validation_token_is_scored(corpus):
    cfg = load_config("shakespeare-char", TINY + [f"data.source={json.dumps(str(corpus))}", "data.val_fraction=0.1",
                                                  "data.test_fraction=0.0"]).data
    task = TextTask(cfg, block_size=16, seed=0)
    text = corpus.read_text(encoding="utf-8")
    val_text = text[len(text) - round(0.1 * len(text)):]
    tok = task.tokenizer
    assert task.val_tokens[0] == tok.eot_id and tok.decode(task.val_tokens[1:]) == val_text + tok.eot
    result = task.full_eval(Uniform(tok.vocab_size), RT)
    assert result["val_tokens"] == len(tok.encode(val_text)) + 1  # every character and the end of the text


def test_test_split_is_scored_only_at_the_end(tmp_path, corpus):
    t = make_trainer(tmp_path, corpus, "train.steps=4", "train.eval_every=2", "data.val_fraction=0.1",
                     "data.test_fraction=0.1", "data.sample_tokens=0")
    task, tok = t.task, t.task.tokenizer
    text = corpus.read_text(encoding="utf-8")
    n = len(text)
    train, val, test = (tok.decode(x).replace(tok.eot, "") for x in (task.train_tokens, task.val_tokens,
                                                                      task.test_tokens))
    assert (train, val, test) == (text[:n - 2 * round(0.1 * n)], text[n - 2 * round(0.1 * n):n - round(0.1 * n)],
                                  text[n - round(0.1 * n):])
    summary = t.train()
    metrics = summary["metrics"]
    assert metrics["test_tokens"] == len(task.test_tokens) - 1 and metrics["test_bpb"] > 0
    records = [json.loads(x) for x in (t.run.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4]
    assert [r["step"] for r in records if "test_loss" in r] == [4]  # the final evaluation only
    final = task.final_metrics(Uniform(tok.vocab_size), RT, 0)
    assert final["test_loss"] == pytest.approx(math.log(tok.vocab_size)) and "eval" in final


def test_training_run_writes_text_outputs(tmp_path, corpus):
    t = make_trainer(tmp_path, corpus, "train.steps=12", "train.eval_every=6", "data.eval_batches=0")
    summary = t.train()
    assert summary["steps"] == 12 and summary["metrics"]["eval"] == "full"
    assert summary["metrics"]["val_bpb"] > 0 and summary["time_to_target"] is None
    run = t.run.path
    assert (run / "checkpoints" / "best.safetensors").is_file() and (run / "checkpoints" / "last.safetensors").is_file()
    assert (run / "samples.txt").read_text().count("--- step") == 2  # with each whole-split evaluation
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [6, 12]
    assert all("tokens_per_second" in r for r in records if "loss" in r)


def test_epochs_visit_every_window_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    rng = torch.Generator().manual_seed(0)
    letters = "abcdefghijklmnopqrstuvwxyz "
    text = "".join(letters[i] for i in torch.randint(len(letters), (3000,), generator=rng).tolist())
    corpus = tmp_path / "random.txt"
    corpus.write_text(text)  # random letters: no two windows have the same content
    cfg = load_config("headlines", TINY + [f"data.source={json.dumps(str(corpus))}", "data.epochs=1.0",
                                           "data.doc_per_line=false"]).data
    task = TextTask(cfg, block_size=16, seed=0)
    n_windows = (len(task.train_tokens) - 1) // 16
    seen = []
    g = torch.Generator()
    for _ in range(n_windows // 4):
        x, _ = task.train_batch(4, g)
        seen += [tuple(row.tolist()) for row in x]
    expected = {tuple(task.train_tokens[i * 16:(i + 1) * 16].tolist()) for i in range(n_windows)}
    assert set(seen) <= expected and len(seen) == len(set(seen)) == (n_windows // 4) * 4


def test_sample_after_a_prompt_longer_than_a_block_is_only_new_text(tmp_path, corpus):
    prompt = "to be or not to be that is the question " * 2  # 80 characters, block_size 16
    cfg = load_config("shakespeare-char", TINY + [f"data.source={json.dumps(str(corpus))}",
                                                  f"data.sample_prompt={json.dumps(prompt)}",
                                                  "data.sample_tokens=12", "data.temperature=0.0"]).data
    task = TextTask(cfg, block_size=16, seed=0)
    torch.manual_seed(0)
    from speedrun.config import ModelConfig
    from speedrun.model import GPT

    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=task.tokenizer.vocab_size))
    text = task.sample(model, RT, step=0)
    assert len(task.tokenizer.encode(text, allow_special=True)) == 12


def test_sampled_estimates_write_no_text_sample(tmp_path, corpus):
    t = make_trainer(tmp_path, corpus, "train.steps=12", "train.eval_every=3", "data.eval_batches=1")
    t.train()
    records = [json.loads(x) for x in (t.run.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval"] for r in records if "val_loss" in r] == ["sampled"] * 3 + ["full"]
    assert (t.run.path / "samples.txt").read_text().count("--- step") == 1  # the final evaluation's only
