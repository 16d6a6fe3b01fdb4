"""The training loop's clocks, budget and schedule: every figure a user can check with a stopwatch."""

import json
import time

import pytest
import torch

from speedrun import trainer as trainer_module
from speedrun.config import load_config
from speedrun.device import setup_runtime
from speedrun.rundir import RunDir
from speedrun.trainer import Trainer

RT = setup_runtime("cpu", "float32")
TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", "train.batch_size=4",
        "train.log_every=1", "dtype=float32", "data.sample_tokens=0", "data.tokenizer=char"]


def make_trainer(tmp_path, corpus, *overrides, name="run", started=None):
    cfg = load_config("shakespeare-char", TINY + [f"data.source={json.dumps(str(corpus))}", *overrides])
    return Trainer(cfg, RunDir.create(cfg, str(tmp_path / name)), RT, progress=False, started=started)


def lr_scales(t):
    records = [json.loads(x) for x in (t.run.path / "metrics.jsonl").read_text().splitlines()]
    return [r["lr_scale"] for r in records if "lr_scale" in r]


class SlowFirstCall(torch.nn.Module):
    """Stands in for torch.compile: the first call pays a fixed 'compile' cost."""

    def __init__(self, model, seconds):
        super().__init__()
        self.model, self.seconds, self.calls = model, seconds, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.seconds)
        return self.model(*args, **kwargs)


def test_compile_time_is_on_the_wall_clock_and_the_budget(tmp_path, line_corpus, monkeypatch):
    monkeypatch.setattr(trainer_module.torch, "compile", lambda model: SlowFirstCall(model, 1.0))
    t = make_trainer(tmp_path, line_corpus, "train.compile=true", "train.time_budget=2.0",
                     "optim.schedule=cosine", "optim.warmup_steps=0")
    summary = t.train()
    assert summary["compiled"] and summary["compile_seconds"] >= 1.0
    assert summary["train_seconds"] < 1.0  # the compile is not training time ...
    # ... but it is wall-clock, and the budget is spent on the wall-clock
    parts = ("setup_seconds", "compile_seconds", "train_seconds", "eval_seconds", "checkpoint_seconds")
    assert summary["wall_seconds"] >= sum(summary[k] for k in parts)
    assert summary["stopped_by"] == "time_budget" and 2.0 <= summary["wall_seconds"] < 4.0


def test_wall_clock_counts_from_process_start(tmp_path, line_corpus):
    started = time.perf_counter() - 5.0  # as if the process had started 5 s ago
    summary = make_trainer(tmp_path, line_corpus, "train.steps=3", started=started).train()
    assert summary["wall_seconds"] >= 5.0 + summary["train_seconds"] + summary["eval_seconds"]
    assert summary["setup_seconds"] >= 5.0


def test_compile_auto_pays_only_for_long_runs(tmp_path, line_corpus):
    assert not make_trainer(tmp_path, line_corpus, "train.steps=10", name="short").compile
    assert not make_trainer(tmp_path, line_corpus, "train.time_budget=60", name="minute").compile
    assert make_trainer(tmp_path, line_corpus, f"train.time_budget={trainer_module.COMPILE_PAYS_AFTER_SECONDS}",
                        name="long").compile
    assert not make_trainer(tmp_path, line_corpus, "train.time_budget=3600", "train.compile=false",
                            name="off").compile


def test_budgeted_run_capped_by_steps_still_anneals(tmp_path, line_corpus):
    t = make_trainer(tmp_path, line_corpus, "train.time_budget=1000", "train.max_steps=12", "optim.schedule=cosine",
                     "optim.warmup_steps=0", "optim.min_lr_ratio=0.1")
    summary = t.train()
    assert summary["steps"] == 12 and summary["stopped_by"] == "steps"
    assert lr_scales(t)[-1] == pytest.approx(0.1)  # the schedule's end, though the budget was far off


def test_budget_lifts_the_step_count(tmp_path, line_corpus):
    t = make_trainer(tmp_path, line_corpus, "train.steps=5", "train.time_budget=1.5")
    summary = t.train()
    assert summary["stopped_by"] == "time_budget" and summary["steps"] > 5


def test_unbudgeted_run_ends_at_the_schedules_end(tmp_path, line_corpus):
    t = make_trainer(tmp_path, line_corpus, "train.steps=10", "optim.schedule=wsd", "optim.warmup_steps=2",
                     "optim.min_lr_ratio=0.0")
    t.train()
    assert lr_scales(t)[-1] == pytest.approx(0.0)


def test_stale_cached_peak_is_measured_again(tmp_path, line_corpus, monkeypatch):
    from speedrun import flops

    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    key = flops.peak_key(RT.device, RT.dtype)
    (tmp_path / "cache").mkdir(exist_ok=True)
    stale = {"flops": 1e3, "measured": "then", "method": "on a busy machine"}
    (tmp_path / "cache" / "peak_flops.json").write_text(json.dumps({key: stale}))
    t = make_trainer(tmp_path, line_corpus, "train.steps=3")
    assert t.peak_flops == 1e3
    summary = t.train()
    assert 0 < summary["mfu"] < 1 and summary["peak_flops"] > 1e8
    cache = json.loads((tmp_path / "cache" / "peak_flops.json").read_text())
    assert cache[key]["flops"] == summary["peak_flops"]
    assert "stale" in (t.run.path / "train.log").read_text()
