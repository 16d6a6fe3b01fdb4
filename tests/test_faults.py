"""Faults a long run meets: a hard kill mid-training, then a resume."""

import json
import signal
import subprocess
import sys
import time

import pytest


ARGS = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "train.batch_size=8",
        "train.steps=150", "train.eval_every=25", "train.log_every=5", "data.sample_tokens=0",
        "train.tensorboard=false", "optim.name=muon", "model.dropout=0.1"]


def speedrun(*args, **kw):
    return [sys.executable, "-m", "speedrun", *args]


def killed_after_first_checkpoint(command: list[str], run) -> None:
    """Start `command` (a `speedrun train ... --out run`) and SIGKILL it once its first
    checkpoint is on disk: mid-training, before the summary."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = run / "checkpoints" / "last.safetensors"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "summary.json").exists()


def records(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


# one text cut into train and val; or a line per document, split by hash into token shards
# of at most 2,000 ids (train spans six), which the training windows cross
@pytest.mark.parametrize("data", [[], ["data.doc_per_line=true", "data.shard_tokens=2000"]], ids=["one", "sharded"])
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, line_corpus, data):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(speedrun("train", "shakespeare-char", "--data", str(line_corpus), "--out", str(whole), "--quiet",
                            *ARGS, *data), check=True, capture_output=True)
    if data:
        manifest = next((tmp_path / "cache" / "prepared").glob("*/manifest.json"))
        assert len(json.loads(manifest.read_text())["splits"]["train"]["shards"]) > 2

    killed_after_first_checkpoint(speedrun("train", "shakespeare-char", "--data", str(line_corpus), "--out",
                                           str(killed), "--quiet", *ARGS, *data), killed)

    resumed = subprocess.run(speedrun("train", "--resume", str(killed)), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step" in (killed / "train.log").read_text()

    a, b = json.loads((whole / "summary.json").read_text()), json.loads((killed / "summary.json").read_text())
    assert b["metrics"]["val_loss"] == a["metrics"]["val_loss"] and b["steps"] == a["steps"] == 150
    losses = lambda run: [(r["step"], r["loss"]) for r in records(run) if "loss" in r]
    assert losses(killed) == losses(whole)  # every logged step, once, with the same loss


def test_sigterm_writes_checkpoint_and_says_how_to_resume(tmp_path, line_corpus):
    run = tmp_path / "term"
    proc = subprocess.Popen(speedrun("train", "shakespeare-char", "--data", str(line_corpus), "--out", str(run),
                                     *ARGS), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"Resume with: speedrun train --resume {run}" in out
    assert (run / "checkpoints" / "last.safetensors").exists()
