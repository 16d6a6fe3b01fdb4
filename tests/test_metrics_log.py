import csv
import importlib.util
import json
import sys
import types

import pytest

from speedrun.config import ConfigError
from speedrun.metrics_log import MetricsLog
from speedrun.rundir import RunDir

TRAIN = [{"step": 50, "loss": 2.1, "lr_scale": 0.9, "train_seconds": 3.2, "tokens": 40960,
          "tokens_per_second": 12800.0, "step_ms": 60.1},
         {"step": 100, "loss": float("nan"), "lr_scale": 0.8, "train_seconds": 6.4, "tokens": 81920,
          "tokens_per_second": 12800.0, "step_ms": 60.0}]
EVAL = {"step": 100, "train_seconds": 6.4, "tokens": 81920, "val_loss": 1.9, "val_bpb": 2.7,
        "eval": "full", "done": False, "by_carries": {"0": 1.0}}

has_tensorboard = importlib.util.find_spec("tensorboard") is not None


def write(path, **kwargs):
    with MetricsLog(RunDir(path), **kwargs) as log:
        for record in [*TRAIN, EVAL]:
            log.log(record)


def test_jsonl_one_line_per_record_with_nan_as_null(tmp_path):
    write(tmp_path, tensorboard=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [50, 100, 100]
    assert lines[1]["loss"] is None and lines[0] == TRAIN[0]
    assert lines[2]["by_carries"] == {"0": 1.0}


def test_csv_has_step_first_then_keys_in_first_seen_order(tmp_path):
    write(tmp_path, tensorboard=False)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "loss", "lr_scale", "train_seconds", "tokens", "tokens_per_second", "step_ms",
                       "val_loss", "val_bpb", "eval", "done"]  # nested by_carries left out
    assert len(rows) == 4
    assert rows[1][:2] == ["50", "2.1"]
    assert rows[2][1] == ""  # NaN loss: null in JSON, empty here
    assert rows[3] == ["100", "", "", "6.4", "81920", "", "", "1.9", "2.7", "full", "False"]


def test_tensorboard_false_writes_no_event_file(tmp_path):
    write(tmp_path, tensorboard=False)
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.skipif(not has_tensorboard, reason="tensorboard is not installed")
def test_tensorboard_scalars_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write(tmp_path)  # tensorboard=None: on, since the package is installed
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "val_loss", "tokens_per_second", "lr_scale"} <= tags
    assert not tags & {"step", "eval", "done", "by_carries"}
    [val] = events.Scalars("val_loss")
    assert val.step == 100 and val.value == pytest.approx(1.9)
    assert [e.step for e in events.Scalars("tokens_per_second")] == [50, 100]


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ConfigError, match="pip install wandb"):
        MetricsLog(RunDir(tmp_path), tensorboard=False, wandb_project="speedrun")


def test_wandb_receives_numeric_fields_at_their_step(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, data, step):
            calls.append((step, data))

        def finish(self):
            calls.append("finish")

    def init(**kwargs):
        calls.append(kwargs)
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    write(tmp_path, tensorboard=False, wandb_project="speedrun", config={"optim": {"lr": 0.002}})
    assert calls[0]["project"] == "speedrun" and calls[0]["config"] == {"optim": {"lr": 0.002}}
    assert calls[3] == (100, {"train_seconds": 6.4, "tokens": 81920, "val_loss": 1.9, "val_bpb": 2.7})
    assert calls[-1] == "finish"


def test_wandb_not_imported_without_a_project(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    write(tmp_path, tensorboard=False)
    assert "wandb" not in sys.modules
