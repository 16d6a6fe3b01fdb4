"""Data parallelism through torchrun: 2 CPU processes (gloo) train like 1 with the same global batch."""

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

# two micro-batches per process (DDP's no_sync on the first), from a line-per-document corpus
# prepared into token shards of at most 2,000 ids, which the windows cross
ARGS = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "train.batch_size=8",
        "train.grad_accum=4", "train.steps=30", "train.eval_every=10", "train.log_every=5",
        "data.sample_tokens=0", "train.tensorboard=false", "optim.name=muon", "data.doc_per_line=true",
        "data.shard_tokens=2000", "--quiet"]


def launch(processes, *args):
    if processes == 1:
        return [sys.executable, "-m", "speedrun", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "speedrun", *args]


def losses(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def test_two_processes_match_one_and_resume_across(tmp_path, line_corpus):
    one, two, part = tmp_path / "one", tmp_path / "two", tmp_path / "part"
    subprocess.run(launch(1, "train", "shakespeare-char", "--data", str(line_corpus), "--out", str(one), *ARGS),
                   check=True, capture_output=True)
    proc = subprocess.run(launch(2, "train", "shakespeare-char", "--data", str(line_corpus), "--out", str(two), *ARGS),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(2 processes)" in proc.stdout
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == [5, 10, 15, 20, 25, 30]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    val = lambda run: json.loads((run / "summary.json").read_text())["metrics"]["val_loss"]
    assert val(two) == pytest.approx(val(one), rel=1e-4)

    # A one-process run stopped part-way resumes under two processes and ends where the others did.
    # The signal races the run's last 20 steps (a fraction of a second), so a run that finished
    # before it arrived is started again; every attempt must end either stopped (130) or done (0).
    for _ in range(5):
        shutil.rmtree(part, ignore_errors=True)
        p = subprocess.Popen(launch(1, "train", "shakespeare-char", "--data", str(line_corpus), "--out", str(part),
                                    *ARGS), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not (part / "checkpoints" / "last.safetensors").exists() and time.time() < deadline:
            time.sleep(0.005)
        p.send_signal(signal.SIGTERM)
        code = p.wait()
        # 0: it finished first; -SIGTERM: the signal met the final evaluation, after the loop's
        # handler (the last checkpoint is whole either way); both are tried again
        assert code in (0, 130, -signal.SIGTERM), code
        if code == 130:
            break
    assert code == 130, "the run ended before it could be stopped, five times"
    proc = subprocess.run(launch(2, "train", "--resume", str(part)), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert val(part) == pytest.approx(val(one), rel=1e-4)


def test_grad_accum_must_divide_among_processes(tmp_path, line_corpus):
    args = [a for a in ARGS if not a.startswith("train.grad_accum")] + ["train.grad_accum=3"]
    proc = subprocess.run(launch(2, "train", "shakespeare-char", "--data", str(line_corpus), "--out", str(tmp_path / "x"),
                                 *args), capture_output=True, text=True)
    assert proc.returncode != 0
    assert "must be a multiple of the 2 processes" in proc.stderr + proc.stdout


class Recorder(torch.nn.Module):
    """A step function that remembers the inputs it trained on."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x, y):
        self.seen.extend(tuple(row.tolist()) for row in x)
        return None, self.w * 0 + 1.0

    @contextlib.contextmanager
    def no_sync(self):
        yield


def test_ranks_train_on_disjoint_windows_of_the_sharded_split(tmp_path, monkeypatch):
    """Each rank trains on its own micro-batches of one global draw across the token shards:
    no window twice, none missed, and the next draw the same on every rank. (Random letters,
    so that two windows with the same ids are the same window.)"""
    import random

    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    corpus = tmp_path / "letters.txt"
    corpus.write_text("".join("".join(rng.choices("abcdefghijklmnopqrstuvwxyz ", k=60)) + "\n" for _ in range(400)))
    from speedrun.config import load_config
    from speedrun.device import setup_runtime
    from speedrun.distributed import Dist
    from speedrun.step import train_step
    from speedrun.tasks import build_task

    cfg = load_config("shakespeare-char", [f"data.source={json.dumps(str(corpus))}", "data.doc_per_line=true",
                                           "data.shard_tokens=2000", "train.grad_accum=4", "train.batch_size=16",
                                           "model.block_size=32"])
    task = build_task(cfg)
    assert len(task.dataset.manifest["splits"]["train"]["shards"]) > 2
    rt = setup_runtime("cpu", "float32")
    seen, after = {}, {}
    for d in (Dist(), Dist(rank=0, world=2), Dist(rank=1, world=2)):
        g = torch.Generator().manual_seed(7)
        model = Recorder()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        train_step(model, model, optimizer, task, cfg, rt, g, d)
        seen[d.rank, d.world], after[d.rank, d.world] = model.seen, g.get_state()
    zero, one = set(seen[0, 2]), set(seen[1, 2])
    assert len(seen[0, 2]) == len(seen[1, 2]) == 2 * 16 and not zero & one
    assert sorted(seen[0, 2] + seen[1, 2]) == sorted(seen[0, 1])
    assert all(torch.equal(state, after[0, 1]) for state in after.values())
