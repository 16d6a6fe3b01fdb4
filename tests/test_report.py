import json
import pytest

from speedrun.cli import main
from speedrun.config import load_config, to_toml
from speedrun.report import ReportError, config_diff, description, load_run, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_run(path, overrides=(), curve=True, recipe="addition", target=None):
    """A finished run directory as `speedrun train` leaves it, without training."""
    path.mkdir(parents=True)
    (path / "config.toml").write_text(to_toml(load_config(recipe, list(overrides))))
    records = []
    for step in (100, 200, 300):
        records.append({"step": step, "loss": 3.0 / step, "train_seconds": step / 50, "tokens_per_second": 1e4})
        if curve:
            records.append({"step": step, "train_seconds": step / 50, "tokens": step * 3072,
                            "val_loss": 2.0 - step / 400, "val_bpb": 2.5, "eval": "full"})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = {"val_loss": 1.25, "val_bpb": 1.8} if curve else {"exact_match": 0.999998, "evaluated": 1_000_000}
    summary = {"recipe": recipe, "task": "addition", "seed": 1337, "steps": 300, "params": 101_000,
               "wall_seconds": 9.5, "train_seconds": 6.0, "eval_seconds": 1.5, "tokens": 921_600,
               "tokens_per_second": 153_600.0,
               "time_to_target": 5.5 if target else None, "target_val_loss": target, "device": "cpu",
               "dtype": "float32", "torch_version": "2.13.0", "git_commit": "abc123", "metrics": metrics}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


BASE = load_config("addition")
CHANGES = [f"optim.lr={BASE.optim.lr * 2}", f"train.seed={BASE.train.seed + 1}"]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """Three runs (one changes the recipe, one has no val curve) and one report on them."""
    root = tmp_path_factory.mktemp("report")
    runs = [fake_run(root / "base", target=1.4), fake_run(root / "changed", CHANGES),
            fake_run(root / "no-curve", curve=False)]
    text = write_report(runs, out=root / "out")
    return runs, root / "out", text


def test_report_writes_curves_and_table(reported):
    runs, out, text = reported
    png = (out / "learning_curves.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    report_md = (out / "report.md").read_text()
    assert report_md == text
    for name in ("base", "changed", "no-curve"):
        assert f"| {name} | addition |" in report_md
    assert "| 101,000 | 300 | 9.5 | 6.0 | 1.2500 |" in report_md  # wall-clock first, training time beside it
    assert "no-curve: no val_loss in metrics.jsonl, nothing plotted" in report_md
    assert "exact_match" in report_md.splitlines()[2]


def test_submission_folder(reported):
    runs = reported[0]
    folder = runs[1] / "submission"
    png = (folder / "learning_curves.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    sub = json.loads((folder / "final_submission.json").read_text())
    assert sub["metrics"] == {"val_loss": 1.25, "val_bpb": 1.8}
    assert sub["time"]["train_seconds"] == 6.0 and sub["time"]["eval_seconds"] == 1.5
    assert sub["time"]["wall_seconds"] == 9.5
    assert sub["time"]["time_to_target"] is None
    assert sub["config"]["optim"]["lr"] == BASE.optim.lr * 2
    assert sub["config"]["model"]["n_layer"] == BASE.model.n_layer
    assert sub["hardware"]["cpu"] and sub["hardware"]["cpu_count"] >= 1 and "gpu" in sub["hardware"]
    assert sub["software"] == {"torch_version": "2.13.0", "python_version": None, "git_commit": "abc123"}
    time_record = json.loads((runs[0] / "submission" / "final_submission.json").read_text())["time"]
    assert {k: v for k, v in time_record.items() if v is not None} == {
        "wall_seconds": 9.5, "train_seconds": 6.0, "time_to_target": 5.5, "target_val_loss": 1.4,
        "eval_seconds": 1.5, "tokens_per_second": 153_600.0}
    for run in runs:
        assert (run / "submission" / "learning_curves.png").is_file()


def test_description_lists_changes_from_the_baseline(reported):
    runs = reported[0]
    described = (runs[1] / "submission" / "description.txt").read_text()
    assert f"optim.lr: {BASE.optim.lr} -> {BASE.optim.lr * 2}" in described
    assert f"train.seed: {BASE.train.seed} -> {BASE.train.seed + 1}" in described
    assert "identical" not in described
    assert "identical to the baseline recipe addition" in (runs[0] / "submission" / "description.txt").read_text()


def test_baseline_option_compares_with_another_recipe(reported):
    described = description(load_run(reported[0][0]), "addition-reference")
    assert "baseline recipe addition-reference" in described
    diff = config_diff(load_config("addition-reference"), BASE)
    assert diff and all(line in described for line in diff)


def test_config_diff_lists_changed_keys_only():
    assert config_diff(BASE, load_config("addition")) == []
    assert config_diff(BASE, load_config("addition", ["optim.lr=0.0123", 'model.pos="rope"'])) == [
        f'model.pos: "{BASE.model.pos}" -> "rope"', f"optim.lr: {BASE.optim.lr} -> 0.0123"]


def test_cli_report_defaults_to_first_run_directory(tmp_path, capsys):
    run = fake_run(tmp_path / "only", curve=False)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Runs") and "| only | addition |" in out and str(run / "report.md") in out
    assert (run / "learning_curves.png").is_file() and (run / "report.md").is_file()


@pytest.mark.parametrize("make, expected", [
    (lambda p: p, "no such folder"),
    (lambda p: (p.write_text("x"), p)[1], "it is not a folder"),
    (lambda p: (p.mkdir(), p)[1], "expected summary.json and config.toml"),
])
def test_not_a_run_directory(tmp_path, make, expected):
    path = make(tmp_path / "nope")
    with pytest.raises(ReportError, match=expected) as err:
        load_run(path)
    assert str(path) in str(err.value)


def test_cli_bad_path_is_one_line_exit_2(tmp_path, capsys):
    run = fake_run(tmp_path / "unfinished")
    (run / "summary.json").unlink()
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {run} is not a finished run directory: expected summary.json in it "
                   "(`speedrun train` writes summary.json when a run ends)\n")
