"""The training loop's clocks, budget and schedule: every figure a user can check with a stopwatch."""

import json
import math
import os
import signal
import time

import pytest
import torch

from speedrun import trainer as trainer_module
from speedrun.compilation import COMPILE_PAYS_AFTER_SECONDS
from speedrun.config import load_config
from speedrun.device import setup_runtime
from speedrun.rundir import RunDir
from speedrun.trainer import Diverged, Interrupted, Trainer

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
    assert make_trainer(tmp_path, line_corpus, f"train.time_budget={COMPILE_PAYS_AFTER_SECONDS}",
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
    # setup is spent from the budget too: 5 s leaves room for more than 5 steps on a busy machine
    t = make_trainer(tmp_path, line_corpus, "train.steps=5", "train.time_budget=5.0")
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


def test_time_budget_stops_and_anneals(tmp_path, corpus):
    t = make_trainer(tmp_path, corpus, "train.steps=100000", "train.time_budget=1.5", "optim.schedule=cosine",
                     "optim.warmup_steps=0", "optim.min_lr_ratio=0.1")
    summary = t.train()
    assert summary["stopped_by"] == "time_budget" and summary["steps"] < 100000
    # the budget is wall-clock: setup, evaluation and checkpoints are spent from it too
    # (the stop comes at the first step past the budget, plus the final evaluation: a few
    # seconds at most, even on a loaded machine)
    assert summary["train_seconds"] < 1.5 <= summary["wall_seconds"] < 1.5 + 6.0
    records = [json.loads(x) for x in (t.run.path / "metrics.jsonl").read_text().splitlines()]
    scales = [r["lr_scale"] for r in records if "lr_scale" in r]
    assert scales[0] > 0.95 and scales[-1] < 0.15  # it annealed to the end of the budget


def test_target_stops_and_records_time(tmp_path, corpus):
    t = make_trainer(tmp_path, corpus, "train.steps=50", "train.eval_every=5", "train.target_val_loss=20.0")
    summary = t.train()
    assert summary["stopped_by"] == "target" and summary["steps"] == 5
    assert summary["train_seconds_to_target"] == pytest.approx(summary["train_seconds"])
    assert summary["train_seconds"] < summary["time_to_target"] <= summary["wall_seconds"]
    assert summary["target_val_loss"] == 20.0
    t = make_trainer(tmp_path, corpus, "train.steps=12", "train.eval_every=5", "train.target_val_loss=20.0",
                     "train.stop_at_target=false", name="go-on")
    summary = t.train()
    assert summary["steps"] == 12 and summary["train_seconds_to_target"] < summary["train_seconds"]


def test_a_target_on_bits_per_byte_stops_the_run(tmp_path, corpus):
    """target_val_bpb compares models with different tokenizers: it is reached on val_bpb, not val_loss."""
    t = make_trainer(tmp_path, corpus, "train.steps=50", "train.eval_every=5", "train.target_val_bpb=100.0",
                     "data.eval_batches=0")
    summary = t.train()
    assert summary["stopped_by"] == "target" and summary["steps"] == 5 and summary["target_val_bpb"] == 100.0
    t = make_trainer(tmp_path, corpus, "train.steps=10", "train.eval_every=5", "train.target_val_bpb=0.01",
                     name="far")
    assert t.train()["time_to_target"] is None
    t = make_trainer(tmp_path, corpus, "train.steps=50", "train.eval_every=5", "train.target_val_bpb=100.0",
                     "data.eval_batches=1", name="sampled")  # an estimate on bits per byte, then confirmed
    summary = t.train()
    assert summary["stopped_by"] == "target" and summary["steps"] == 5


def test_sampled_estimate_is_labelled_and_confirmed_before_target(tmp_path, corpus):
    t = make_trainer(tmp_path, corpus, "train.steps=50", "train.eval_every=5", "train.target_val_loss=20.0",
                     "data.eval_batches=1")
    summary = t.train()
    records = [json.loads(x) for x in (t.run.path / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in records if "eval" in r]
    assert evals[:2] == ["sampled", "full"] and summary["stopped_by"] == "target"


def test_a_run_stopped_at_its_confirmed_target_scores_val_once(tmp_path, corpus):
    """The final report reuses the whole-split evaluation that confirmed the target at that step."""
    t = make_trainer(tmp_path, corpus, "train.steps=50", "train.eval_every=5", "train.target_val_loss=20.0",
                     "data.eval_batches=1")
    scored = []
    full_eval = t.task.full_eval
    t.task.full_eval = lambda model, rt, split="val": scored.append(split) or full_eval(model, rt, split)
    summary = t.train()
    assert summary["stopped_by"] == "target" and scored == ["val", "test"]
    records = [json.loads(x) for x in (t.run.path / "metrics.jsonl").read_text().splitlines()]
    confirmed, final = [r for r in records if r.get("eval") == "full"]
    assert final["val_loss"] == confirmed["val_loss"] == summary["metrics"]["val_loss"] and "test_loss" in final


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, corpus, monkeypatch):
    args = ("train.steps=24", "train.eval_every=8", "optim.name=muon", "model.dropout=0.1")
    whole = make_trainer(tmp_path, corpus, *args, name="whole").train()

    real_step, calls = trainer_module.train_step, []

    def step_then_interrupt(*a, **kw):
        loss = real_step(*a, **kw)
        calls.append(1)
        if len(calls) == 13:  # not at an evaluation boundary
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(trainer_module, "train_step", step_then_interrupt)
    part = make_trainer(tmp_path, corpus, *args, name="part")
    with pytest.raises(Interrupted):
        part.train()
    monkeypatch.setattr(trainer_module, "train_step", real_step)
    cfg = part.run.resume_config()
    resumed = Trainer(cfg, part.run, RT, progress=False).train(resume=True)

    def losses(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}

    assert losses("part") == losses("whole")
    assert resumed["metrics"]["val_loss"] == whole["metrics"]["val_loss"]
    assert resumed["steps"] == whole["steps"] == 24


def spike_at(trainer, calls_with_nan):
    """Make the token embedding emit NaN on the given forward calls (1-based)."""
    count = [0]

    def hook(module, args, output):
        count[0] += 1
        return output * float("nan") if count[0] in calls_with_nan else output

    trainer.model.tok_emb.register_forward_hook(hook)


def test_isolated_nonfinite_step_is_skipped_when_allowed(tmp_path, corpus):
    t = make_trainer(tmp_path, corpus, "train.steps=12", "train.skip_nonfinite=1", "train.eval_every=0")
    spike_at(t, {5})
    summary = t.train()
    assert summary["steps"] == 12 and math.isfinite(summary["metrics"]["val_loss"])
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert "update skipped (1 of train.skip_nonfinite=1)" in (t.run.path / "train.log").read_text()


def test_nonfinite_loss_stops_naming_the_step(tmp_path, corpus):
    t = make_trainer(tmp_path, corpus, "train.steps=12", "train.eval_every=0", name="stop")
    spike_at(t, {5})
    with pytest.raises(Diverged, match="at step 5: training diverged"):
        t.train()
    t = make_trainer(tmp_path, corpus, "train.steps=12", "train.skip_nonfinite=1", "train.eval_every=0",
                     name="twice")
    spike_at(t, {3, 7})
    with pytest.raises(Diverged, match="not finite at 2 steps, the last at step 7"):
        t.train()


def test_checkpoint_of_another_shape_is_a_clear_error(tmp_path, corpus):
    from speedrun.config import ConfigError

    small = make_trainer(tmp_path, corpus, "train.steps=2", "train.eval_every=0", name="small")
    small.train()
    wide = make_trainer(tmp_path, corpus, "train.steps=4", "model.n_embd=32", name="wide")
    wide.run = small.run  # the wider model pointed at the smaller model's checkpoint
    with pytest.raises(ConfigError, match="checkpoint does not match the model in the config"):
        wide.train(resume=True)


def test_process_start_is_the_processs_own_start_not_its_import_of_speedrun(tmp_path):
    """Every headline figure starts at process start. A child that sleeps 1.5 s before it
    imports speedrun must read a start ~1.5 s before the import, and its parent, which
    noted the time just before launching it, must see that start within the launch's
    own latency (if process_start fell back to import time, the gap would be ~1.5 s)."""
    import subprocess
    import sys

    code = ("import time; time.sleep(1.5); before = time.perf_counter(); "
            "from speedrun.clock import process_start; print(process_start(), before)")
    launched = time.perf_counter()  # CLOCK_MONOTONIC: the same clock in parent and child on Linux
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    start, imported = map(float, out.split())
    assert imported - start >= 1.4  # the sleep before the import counts
    assert -0.05 <= start - launched <= 0.5  # the child's start is its launch, give or take a clock tick


def test_run_state_round_trips_through_a_checkpoint_and_names_its_stop_reasons():
    from speedrun.trainer import RunState, StopReason

    state = RunState.fresh(torch.device("cpu"))
    state.step, state.setup_seconds, state.best_val_loss, state.time_to_target = 42, 1.5, 2.25, 9.0
    state.train_clock.seconds, state.compile_clock.seconds = 7.0, 3.0
    state.stopped_by, state.skipped_steps = StopReason.TARGET, 2
    saved = state.saved(wall_seconds=12.0)
    assert saved["step"] == 42 and saved["train_seconds"] == 7.0 and saved["wall_seconds"] == 12.0
    assert "stopped_by" not in saved and "skipped_steps" not in saved  # this process's, not the run's
    back = RunState.restored(saved, torch.device("cpu"))
    assert (back.step, back.best_val_loss, back.time_to_target, back.train_clock.seconds) == (42, 2.25, 9.0, 7.0)
    assert back.wall_before == 12.0 and back.stopped_by == StopReason.STEPS
    assert json.dumps(StopReason.TIME_BUDGET) == '"time_budget"'  # summary.json keeps its strings


VAL_BY_STEP = {2: 3.0, 4: 2.0, 6: 2.5, 8: 2.1, 10: 1.0, 12: 0.5}  # best at step 4, then two worse


def scripted_val(trainer):
    """The task's periodic evaluation replaced by whole-split val losses fixed per step."""
    trainer.task.evaluate = lambda model, rt, step, final=False: {"val_loss": VAL_BY_STEP[step], "eval": "full"}
    return trainer


PATIENT = ("train.steps=12", "train.eval_every=2", "train.patience=2", "data.eval_batches=0")


def test_patience_stops_after_evaluations_without_a_new_best(tmp_path, corpus):
    t = scripted_val(make_trainer(tmp_path, corpus, *PATIENT))
    summary = t.train()
    assert summary["stopped_by"] == "val_plateau" and summary["steps"] == 8 and summary["best_step"] == 4
    assert summary["metrics"]["best_val_loss"] == 2.0
    assert t.run.load_checkpoint("best")[1]["step"] == 4
    patient = make_trainer(tmp_path, corpus, *PATIENT[:2], "data.eval_batches=0", name="off")
    summary = scripted_val(patient).train()  # patience 0: the plateau is ridden out, the summary as before
    assert summary["stopped_by"] == "steps" and summary["steps"] == 12 and "best_step" not in summary


def test_a_resumed_run_keeps_its_count_of_evaluations_without_a_new_best(tmp_path, corpus, monkeypatch):
    whole = scripted_val(make_trainer(tmp_path, corpus, *PATIENT, name="whole")).train()
    real_step, calls = trainer_module.train_step, []

    def step_then_interrupt(*a, **kw):
        calls.append(1)
        if len(calls) == 7:  # after step 6's evaluation, the first without a new best
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*a, **kw)

    monkeypatch.setattr(trainer_module, "train_step", step_then_interrupt)
    part = scripted_val(make_trainer(tmp_path, corpus, *PATIENT, name="part"))
    with pytest.raises(Interrupted):
        part.train()
    monkeypatch.setattr(trainer_module, "train_step", real_step)
    assert part.run.load_checkpoint("last")[1]["evals_since_best"] == 1
    resumed = scripted_val(Trainer(part.run.resume_config(), part.run, RT, progress=False)).train(resume=True)
    assert (resumed["stopped_by"], resumed["steps"], resumed["best_step"]) == ("val_plateau", 8, 4)
    assert resumed["metrics"]["val_loss"] == whole["metrics"]["val_loss"]


def test_the_model_of_a_run_that_stops_by_val_is_its_best_checkpoint(tmp_path, corpus):
    """What `speedrun sample`, `chat`, `serve`, export and a fine-tuning's init_from load."""
    from speedrun.rundir import load_run_model

    patient = scripted_val(make_trainer(tmp_path, corpus, *PATIENT))
    patient.train()
    plain = make_trainer(tmp_path, corpus, "train.steps=6", "train.eval_every=2", "data.eval_batches=0", name="plain")
    scripted_val(plain).train()
    for run, chosen in ((patient.run, "best"), (plain.run, "last")):
        weights = run.load_checkpoint(chosen)[0]
        assert not all(torch.equal(weights[k], v) for k, v in run.load_checkpoint(
            "last" if chosen == "best" else "best")[0].items())  # the two checkpoints differ
        model = load_run_model(str(run.path))[0]
        assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    follow = make_trainer(tmp_path, corpus, "train.steps=1", f"train.init_from={patient.run.path}", name="follow")
    follow.load_initial_weights(str(patient.run.path))
    best = patient.run.load_checkpoint("best")[0]
    assert all(torch.equal(best[k], v) for k, v in follow.model.state_dict().items())


def test_the_final_metrics_of_a_run_that_stops_by_val_are_its_best_checkpoints(tmp_path, corpus, monkeypatch):
    """summary.json describes the model every loader gives, read from one checkpoint only."""
    from speedrun.rundir import RunDir

    finals = []

    def evaluated_weights(trainer):
        real = trainer.task.final_metrics
        trainer.task.final_metrics = lambda model, rt, step: finals.append(
            {k: v.clone() for k, v in model.state_dict().items()}) or real(model, rt, step)
        return trainer

    patient = evaluated_weights(scripted_val(make_trainer(tmp_path, corpus, *PATIENT)))
    patient.train()
    plain = make_trainer(tmp_path, corpus, "train.steps=6", "train.eval_every=2", "data.eval_batches=0", name="plain")
    evaluated_weights(scripted_val(plain)).train()
    for run, chosen, weights in ((patient.run, "best", finals[0]), (plain.run, "last", finals[1])):
        saved = run.load_checkpoint(chosen)[0]
        assert all(torch.equal(saved[k], v) for k, v in weights.items())
    last = patient.run.load_checkpoint("last")[0]  # still the last step's, to resume from
    assert not all(torch.equal(last[k], v) for k, v in finals[0].items())
    reads = []
    real_load = RunDir.load_checkpoint
    monkeypatch.setattr(RunDir, "load_checkpoint", lambda self, name="last": reads.append(name) or real_load(self, name))
    patient.run.load_model_weights()
    assert reads == ["best"]
