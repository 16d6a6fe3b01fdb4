"""speedrun.rundir: a run folder's files and a chat pipeline's folder, written and read back."""

import json

from speedrun.config import Config
from speedrun.rundir import ChatRunDir, RunDir
from speedrun.data.sources import load_documents
from speedrun.tokenizer import EOT, CharTokenizer, load_tokenizer_file


def test_summary_round_trip_with_nan_as_null(tmp_path):
    run = RunDir.create(Config(), str(tmp_path / "run"))
    assert run.config_file.is_file() and not run.has_summary()
    run.write_summary({"steps": 3, "metrics": {"val_loss": float("nan")}})
    assert run.has_summary() and run.summary_file == tmp_path / "run" / "summary.json"
    assert run.read_summary() == {"steps": 3, "metrics": {"val_loss": None}}
    assert sorted(p.name for p in run.path.iterdir()) == ["config.toml", "summary.json"]  # no temporary file left


def test_chat_run_dir_layout_round_trip(tmp_path):
    folder = ChatRunDir(tmp_path / "chat")
    folder.path.mkdir()
    assert not folder.is_pipeline() and folder.read_state() is None and folder.read_eval(ChatRunDir.BASE) is None
    folder.write_state({"stages": {"tokenizer": {"seconds": 1.5}}})
    folder.write_corpus(["one document", "two\nlines ü"])
    tok = CharTokenizer("abc", eot=EOT)
    folder.write_tokenizer(tok, {"vocab_size": tok.vocab_size})
    folder.write_eval(ChatRunDir.SFT, {"score": 0.5})
    assert folder.is_pipeline() and folder.read_state() == {"stages": {"tokenizer": {"seconds": 1.5}}}
    assert load_documents(str(folder.corpus_file)) == ["one document", "two\nlines ü"]  # as the base stage reads it
    assert load_tokenizer_file(folder.tokenizer_file).to_json() == tok.to_json()
    assert folder.read_tokenizer_stats() == {"vocab_size": tok.vocab_size}
    assert folder.read_eval(ChatRunDir.SFT) == {"score": 0.5} and folder.read_eval(ChatRunDir.BASE) is None
    files = sorted(str(p.relative_to(folder.path)) for p in folder.path.rglob("*"))
    assert files == ["corpus.jsonl", "eval_sft.json", "pipeline.json", "tokenizer", "tokenizer/stats.json",
                     "tokenizer/tokenizer.json"]
    assert folder.run(ChatRunDir.BASE).path == folder.path / "base" and folder.report_file.name == "report.md"


def test_chat_run_dir_finds_the_most_trained_run_and_the_finished_ones(tmp_path):
    folder = ChatRunDir(tmp_path)
    assert folder.trained_run() is None and folder.finished_runs() == []
    for stage in (ChatRunDir.BASE, ChatRunDir.SFT):
        run = folder.run(stage)
        run.checkpoints.mkdir(parents=True)
        run.checkpoint("last").write_bytes(b"")
        assert folder.trained_run().path == run.path  # fine-tuned, once it has a checkpoint
    folder.run(ChatRunDir.SFT).write_summary({"steps": 1})
    assert [run.path.name for run in folder.finished_runs()] == ["sft"]
    folder.run(ChatRunDir.BASE).write_summary({"steps": 2})
    assert [run.path.name for run in folder.finished_runs()] == ["base", "sft"]
    assert json.loads((tmp_path / "base" / "summary.json").read_text()) == {"steps": 2}
