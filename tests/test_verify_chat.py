"""`speedrun verify chat-pipeline`: the chat claim judged on every seed, its record, its resume,
its errors, and one tiny pipeline fine-tuned from one base for real."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks import report
from speedrun import verify
from speedrun.apps.chat_pipeline import PipelineConfig
from speedrun.cli import main
from speedrun.config import ConfigError
from speedrun.rundir import ChatRunDir
from speedrun.verify_chat import (
    BASE_STAGES,
    CHAT_MARGIN_OVER_CONSTANT_POINTS,
    CHAT_TASK_ACCURACY,
    ChatSeeds,
    build_chat_record,
    format_chat_record,
    seed_misses,
    task_verdict,
    verify_chat,
)

SETTINGS = {"config": asdict(PipelineConfig()), "overrides": {"base": [], "sft": ["train.steps=5"]}}


def evaluation(**accuracy) -> dict:
    """eval_sft.json's tasks: a fine-tuned model that meets the claim, but for the accuracies given."""
    rows = {"addition": (1.0, 0.12), "addition_no_tool": (0.05, 0.12), "spelling": (0.97, 0.05),
            "counting": (0.99, 0.2), "identity": (0.8, 0.38)}
    return {name: {"accuracy": accuracy.get(name, a), "constant": c} for name, (a, c) in rows.items()}


def test_one_evaluation_is_judged_by_each_target_and_margin():
    assert CHAT_TASK_ACCURACY == {"addition": 0.95, "spelling": 0.90, "counting": 0.80}
    assert CHAT_MARGIN_OVER_CONSTANT_POINTS == 30
    at_the_line = task_verdict("addition", 0.95, 0.65)  # 95% and 30 points exactly, in floats
    assert at_the_line == {"margin_points": 30.0, "target_met": True, "margin_met": True}
    assert task_verdict("identity", 0.7, 0.4) == {"margin_points": 30.0, "target_met": None, "margin_met": True}
    assert task_verdict("identity", 0.69, 0.4)["margin_met"] is False  # identity has no target, but a margin
    assert task_verdict("addition_no_tool", 0.0, 0.3)["margin_met"] is None  # shown, not judged
    rows = {k: {**v, **task_verdict(k, v["accuracy"], v["constant"])} for k, v in evaluation(counting=0.45).items()}
    assert seed_misses(rows) == ["counting 45% (< 80%; +25 points over its constant answer, < 30)"]
    del rows["spelling"]
    assert "spelling not evaluated" in seed_misses(rows)


def entries(kind: ChatSeeds, *evaluations) -> list[dict]:
    """The record's seeds from each seed's evaluation (None: the seed did not finish)."""
    stages = {stage: {"seconds": 10.0} for stage in BASE_STAGES + kind.stages()}
    return [kind.entry(seed, Path(f"out/seed-{seed}"), tasks and {"stages": stages, "tasks": tasks,
                       "summary": {"dtype": "float32", "steps": 400}}, 0 if tasks else 1, 30.0)
            for seed, tasks in enumerate(evaluations, 1)]


def test_one_failing_seed_fails_the_chat_claim():
    kind = ChatSeeds(SETTINGS)
    good = entries(kind, evaluation(), evaluation(spelling=0.95), evaluation())
    record = build_chat_record(kind, good, [{}] * 3)
    assert record["holds"] and record["missed"] == [] and record["kind"] == "tasks"
    spelling = next(row for row in record["tasks"] if row["task"] == "spelling")
    assert spelling["accuracy_mean"] == pytest.approx(0.9633333) and spelling["accuracy_min"] == 0.95
    assert spelling["accuracy_sd"] == pytest.approx(0.011547, rel=1e-4) and spelling["constant"] == pytest.approx(0.05)
    assert spelling["margin_points_min"] == 90.0 and spelling["verdict"] == "met" and spelling["target"] == 0.9
    assert next(row for row in record["tasks"] if row["task"] == "addition_no_tool")["verdict"] == "shown"
    assert record["seeds"][0]["stage_seconds"] == {stage: 10.0 for stage in kind.stages()}
    assert record["seeds"][0]["pipeline_seconds"] == 50.0 and record["stages"] == list(kind.stages())
    for key in ("settings", "config_sha256", "claim", "targets", "margin_points", "n_seeds", "process_seconds",
                "machine", "git_commit", "python_version", "created"):
        assert key in record
    json.dumps(record)
    table = format_chat_record({**record, "caches": "cold", "verify_seconds": 100.0})
    assert "the claim HOLDS" in table and "96.3%" in table and "shown" in table

    one_bad = entries(kind, evaluation(), evaluation(counting=0.79), evaluation())
    record = build_chat_record(kind, one_bad, [{}] * 3)
    assert not record["holds"] and record["missed"] == ["seed 2: counting 79% (< 80%)"]
    assert next(row for row in record["tasks"] if row["task"] == "counting")["verdict"] == "MISSED"
    assert "does NOT hold: seed 2: counting 79%" in format_chat_record({**record, "verify_seconds": 1.0})
    unfinished = build_chat_record(kind, entries(kind, evaluation(), None, evaluation()), [{}] * 3)
    assert not unfinished["holds"] and unfinished["missed"] == ["seed 2: did not finish (exit code 1; "
                                                                 "see logs/seed-2.txt)"]
    two = build_chat_record(kind, entries(kind, evaluation(), evaluation()), [{}] * 2)
    assert not two["holds"] and "takes at least 3 seeds" in format_chat_record({**two, "verify_seconds": 1.0})


def fake_pipeline(evaluations: dict, calls: list):
    """run_command standing in for `speedrun chat-pipeline`: the stages asked recorded finished, as
    the pipeline records them, and eval_sft.json from `evaluations` (None: the command fails)."""
    def run(args, warm=False):
        calls.append((args, warm))
        out = Path(args[args.index("--out") + 1])
        seed = int(next(a for a in args if a.startswith("sft.train.seed=")).split("=")[1])
        if evaluations.get(seed) is None:
            return 1, 1.0, "Traceback: it broke\n"
        chat = ChatRunDir(out)
        state = chat.read_state()
        state["overrides"]["sft"].append(f"train.seed={seed}")
        for stage in (args[i + 1] for i, a in enumerate(args) if a == "--stage"):
            state["stages"][stage] = {"seconds": 2.0}
        chat.run("sft").path.mkdir(parents=True)
        chat.run("sft").write_summary({"dtype": "float32", "steps": 10})
        chat.write_eval("sft", {"tasks": evaluations[seed]})
        chat.write_state(state)
        return 0, 2.5, "done\n"
    return run


def test_an_interrupted_chat_verify_runs_only_the_missing_seeds(tmp_path, monkeypatch):
    calls = []
    evaluations = {1: evaluation(), 2: evaluation(), 3: None}
    monkeypatch.setattr(verify, "run_command", fake_pipeline(evaluations, calls))
    out = tmp_path / "v"
    record = verify_chat(SETTINGS, 3, out, say=lambda line: None)
    assert not record["holds"] and record["seeds"][2]["exit_code"] == 1  # seed 3 failed: counts against
    first, warm = calls[0]
    assert not warm and "base.train.seed=1" in first and "sft.train.seed=1" in first  # every stage, cold
    assert [first[i + 1] for i, a in enumerate(first) if a == "--stage"] == [*BASE_STAGES, "sft", "eval_sft"]
    assert "sft.train.steps=5" in first and "vocab_size=2048" in first
    assert (out / "logs" / "seed-3.txt").read_text() == "Traceback: it broke\n"
    assert json.loads((out / "verify.json").read_text())["config_sha256"] == record["config_sha256"]

    calls.clear()
    evaluations[3] = evaluation()
    (out / "seed-2" / "eval_sft.json").unlink()  # stopped during its evaluation
    record = verify_chat(SETTINGS, 3, out, say=lambda line: None)
    assert [args[args.index("--out") + 1] for args, _ in calls] == [str(out / "seed-2"), str(out / "seed-3")]
    assert record["holds"] and record["seeds"][0]["process_seconds"] is None  # seed 1 reused
    with pytest.raises(ConfigError, match="seed-1 holds a pipeline of another config"):
        verify_chat({**SETTINGS, "overrides": {"base": [], "sft": ["train.steps=6"]}}, 3, out)
    with pytest.raises(ConfigError, match="sft.train.seed: verify sets it"):
        verify_chat({**SETTINGS, "overrides": {"base": [], "sft": ["train.seed=4"]}}, 3, tmp_path / "w")


def finished_base(folder: Path, stages=("tokenizer", "base", "eval_base")) -> Path:
    """A pipeline folder as `speedrun chat-pipeline` leaves it after the given stages (no weights)."""
    chat = ChatRunDir(folder)
    chat.tokenizer_file.parent.mkdir(parents=True)
    chat.tokenizer_file.write_text("{}")
    chat.run("base").path.mkdir()
    chat.run("base").write_summary({"steps": 900})
    chat.write_eval("base", {"tasks": {}})
    chat.write_state({"stages": {stage: {"seconds": 60.0} for stage in stages}, "config": SETTINGS["config"],
                      "overrides": {"base": ["train.steps=900"], "sft": ["optim.lr=0.1"]}})
    return folder


def test_a_given_base_is_copied_into_each_seed_and_never_changed(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(verify, "run_command", fake_pipeline({1: evaluation(), 2: evaluation()}, calls))
    base = finished_base(tmp_path / "chat")
    before = {p: p.read_bytes() for p in base.rglob("*") if p.is_file()}
    out = tmp_path / "v"
    assert main(["verify", "chat-pipeline", "--base", str(base), "--seeds", "2", "--out", str(out),
                 "sft.train.steps=7"]) == 1  # 2 seeds are not enough for the claim
    assert {p: p.read_bytes() for p in base.rglob("*") if p.is_file()} == before
    args = calls[0][0]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--stage"] == ["sft", "eval_sft"]
    assert "base.train.steps=900" in args and "sft.train.steps=7" in args and "sft.optim.lr=0.1" not in args
    assert not any(a.startswith("base.train.seed") for a in args)
    seed = ChatRunDir(out / "seed-1")
    assert seed.tokenizer_file.read_text() == "{}" and seed.run("base").has_summary()
    assert list(seed.read_state()["stages"]) == ["tokenizer", "base", "eval_base", "sft", "eval_sft"]
    record = json.loads((out / "verify.json").read_text())
    assert record["base"]["folder"] == str(base) and not record["base"]["made_by_verify"]
    assert record["command"].startswith("speedrun verify chat-pipeline --base")
    assert "takes at least 3 seeds" in capsys.readouterr().out

    # the renderer of docs/results.md, on this record as if copied into results/
    text = "\n".join(report.kind(Path("results/verify-chat.json"))(report.load(out / "verify.json")))
    assert "- command: `speedrun verify chat-pipeline --base" in text and "Base, once:" in text
    assert "In one line: addition 100.0 +/- 0.0% (min 100.0%, constant 12.0%); spelling 97.0" in text
    assert "| spelling | 0.9 | 0.97 | 0.0 | 0.97 | 0.97 | 0.05 | 92.0 | 92.0 | met |" in text
    assert "| 1 | yes | 1.0 | 0.05 | 0.97 | 0.99 | 0.8 | 2.0 | 2.0 | 2.5 |" in text


@pytest.mark.parametrize("argv, message", [
    (["--base", "{unfinished}"], "no finished tokenizer and base stage there (pipeline.json); make one with "
                                 "`speedrun chat-pipeline --out {unfinished} --stage tokenizer --stage base`"),
    (["--base", "{missing}"], "--base {missing}: no finished tokenizer and base stage there"),
    (["--base", "{base}", "vocab_size=1024"], "vocab_size=1024: with --base the pipeline settings"),
    (["--base", "{base}", "base.train.steps=3"], "base.train.steps=3: with --base"),
    (["--target", "0.9"], "--target: the chat claim's targets are fixed"),
    (["base.train.seed=2"], "base.train.seed: verify sets it to each seed's"),
    (["sft.train.stepz=2"], "unknown config key 'train.stepz'"),
    (["vocab_sise=2"], "unknown config key 'vocab_sise'"),
])
def test_bad_chat_verify_input_is_one_line_before_any_work(tmp_path, capsys, argv, message):
    paths = {"unfinished": finished_base(tmp_path / "unfinished", stages=("tokenizer",)),
             "missing": tmp_path / "nothing", "base": finished_base(tmp_path / "chat")}
    argv = [a.format(**paths) for a in argv]
    assert main(["verify", "chat-pipeline", "--out", str(tmp_path / "v"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(**paths) in err
    assert not (tmp_path / "v").exists()


def test_the_chat_options_are_refused_for_a_recipe(capsys):
    assert main(["verify", "shakespeare-char", "--sft-only"]) == 2
    assert "they are for `speedrun verify chat-pipeline`" in capsys.readouterr().err


TINY = ["vocab_size=300", "eval_items=1", "max_new_tokens=8", "base.model.n_layer=1", "base.model.n_embd=32",
        "base.model.n_head=2", "base.model.block_size=192", "base.train.steps=4", "base.train.eval_every=0",
        "base.train.time_budget=0", "base.data.sample_tokens=0", "base.train.batch_size=4", "sft.train.steps=4",
        "sft.train.eval_every=2", "sft.train.time_budget=0", "sft.train.batch_size=4", "sft.data.train_items=200",
        "sft.data.val_items=10"]


def test_sft_only_fine_tunes_a_copy_of_one_base_for_real(tmp_path, line_corpus, capsys):
    """The real commands, tiny: the base trained once, a seed's pipeline started from a copy of it
    runs fine-tuning and its evaluation alone, and a second run reuses both (about 20 s)."""
    out = tmp_path / "v"
    argv = ["verify", "chat-pipeline", "--sft-only", "--seeds", "1", "--data", str(line_corpus), "--out", str(out),
            "--warm", *TINY]
    assert main(argv) == 1  # a 4-step model misses the targets
    record = json.loads((out / "verify.json").read_text())
    assert record["base"]["made_by_verify"] and set(record["base"]["stage_seconds"]) == set(BASE_STAGES)
    seed = record["seeds"][0]
    assert seed["exit_code"] == 0 and set(seed["stage_seconds"]) == {"sft", "eval_sft"} and seed["tasks"]
    assert {row["task"] for row in record["tasks"]} >= {"addition", "addition_no_tool", "identity"}
    sft_config = (out / "seed-1" / "sft" / "config.toml").read_text()
    assert f'init_from = "{out / "seed-1" / "base"}"' in sft_config and "seed = 1\n" in sft_config
    copied, base = (out / "seed-1" / "base" / "summary.json"), (out / "base" / "base" / "summary.json")
    assert copied.read_bytes() == base.read_bytes()
    capsys.readouterr()
    assert main(argv) == 1
    printed = capsys.readouterr().out
    assert "base: finished earlier" in printed and "seed 1: finished earlier" in printed
