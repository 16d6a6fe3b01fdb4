import json
import re
import subprocess
import sys

import pytest

from speedrun.cli import main

TINY = ["model.n_embd=16", "model.n_head=1", "train.steps=30", "train.batch_size=32", "train.log_every=10",
        "train.eval_every=10", "dtype=float32"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "addition", *TINY, "--out", str(out), "--quiet"]) == 0
    return out


def test_train_writes_run_directory(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("recipe", "seed", "steps", "params", "train_seconds", "eval_seconds", "device", "dtype",
                "torch_version", "git_commit", "metrics"):
        assert key in summary, key
    assert summary["recipe"] == "addition" and summary["steps"] == 30 and summary["dtype"] == "float32"
    assert summary["tokens"] == 30 * 32 * 12 and 0 < summary["mfu"] < 1 and summary["peak_flops"] > 1e8
    metrics = summary["metrics"]
    assert metrics["evaluated"] == 1_000_000 and 0.0 <= metrics["exact_match"] <= 1.0
    assert set(metrics["exact_match_by_carries"]) == {"0", "1", "2", "3"}
    assert len(metrics["failures"]) <= 20
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [10, 20, 30]
    assert any("val_loss" in r for r in lines)
    assert "n_embd = 16" in (run_dir / "config.toml").read_text()
    assert (run_dir / "checkpoints" / "last.safetensors").is_file()
    assert ": 30 steps in" in (run_dir / "train.log").read_text()


def test_sample_loads_checkpoint(run_dir, capsys):
    assert main(["sample", str(run_dir), "--prompt", "123+456="]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("123+456=") and len(out) <= len("123+456=") + 4
    assert all(c in "0123456789+=" for c in out)


def test_sample_refuses_unknown_characters(run_dir, capsys):
    assert main(["sample", str(run_dir), "--prompt", "12a+4="]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "'a'" in err and "vocabulary" in err


def test_out_dir_not_empty_is_refused(run_dir, capsys):
    assert main(["train", "addition", *TINY, "--out", str(run_dir)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (run_dir / "summary.json").is_file()  # nothing lost


def test_recipes_lists_bundled(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "addition " in out and "addition-reference" in out


@pytest.mark.parametrize("args, message", [
    (["train", "additon"], "unknown recipe 'additon'"),
    (["train", "addition", "train.sed=1"], "did you mean 'train.seed'"),
    (["train", "addition", "model.n_layer=two"], "expected int"),
    (["sample", "/nonexistent/run", "--prompt", "1"], "does not exist"),
])
def test_user_errors_exit_2_without_traceback(args, message, tmp_path):
    extra = ["--out", str(tmp_path / "x")] if args[0] == "train" else []
    proc = subprocess.run([sys.executable, "-m", "speedrun", *args, *extra], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_text_run_from_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40)
    out = tmp_path / "run"
    args = ["train", "shakespeare-char", "--data", str(corpus), "--out", str(out), "--quiet", "train.steps=6",
            "train.eval_every=3", "model.n_layer=1", "model.n_embd=16", "model.block_size=16",
            "train.batch_size=4", "data.sample_tokens=5", "train.tensorboard=false"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["metrics"]["val_bpb"] > 0
    capsys.readouterr()
    assert main(["sample", str(out), "--prompt", "First", "--max-new-tokens", "40", "--temperature", "0.8",
                 "--top-k", "5"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("First") and len(text) > len("First")
    assert main(["sample", str(out), "--prompt", "Zebra™"]) == 2
    assert "outside this model's vocabulary" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "train.steps=9"]) == 2
    assert "give no recipe, overrides" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "shakespeare-char", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope.txt" in err


def test_bench_peak_prints_both_dtypes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path))
    assert main(["bench", "peak", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "float32 matmul peak:" in out and "bfloat16 matmul peak:" in out and "GFLOP/s" in out


def test_diverging_loss_stops_with_the_step_named(tmp_path, capsys):
    out = tmp_path / "nan"
    args = ["train", "addition", *TINY, "optim.name=adamw", "optim.lr=1e30", "optim.grad_clip=0.0",
            "optim.warmup_steps=0", "train.eval_every=0", "train.log_every=1", "--out", str(out), "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert re.match(r"error: loss is (nan|-?inf) at step \d+: training diverged", err) and "lower optim.lr" in err
    assert "training diverged" in (out / "train.log").read_text()


def test_text_shorter_than_a_block_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "short.txt"
    corpus.write_text("To be, or not to be.\n" * 3)
    assert main(["train", "shakespeare-char", "--data", str(corpus), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "fewer than one block" in err and "lower model.block_size" in err
    assert not (tmp_path / "r").exists()  # nothing half-made is left to block a retry
