"""The benchmarks as a suite: each one a module of the `benchmarks` package with a `main`, listed by
`python -m benchmarks`, none touching sys.path, and every record written by one writer that says
how it was made."""

import gzip
import importlib
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from benchmarks import PACKAGE, catalogue, common, corpora, report

ROOT = Path(__file__).resolve().parents[1]
SHARED = {"common", "timing", "corpora"}  # what the benchmarks share; not benchmarks themselves


@pytest.fixture
def fixed_machine(monkeypatch):
    """A machine whose matmul peak is not measured (measuring takes seconds)."""
    monkeypatch.setattr(common, "matmul_peaks", lambda: {"float32": 1e11})
    common.machine.cache_clear()
    yield
    common.machine.cache_clear()


def test_every_module_is_a_benchmark_with_a_main_or_shared():
    modules = {path.stem for path in PACKAGE.glob("[!_]*.py")}
    assert set(catalogue()) == modules - SHARED
    for name in catalogue():
        assert callable(importlib.import_module(f"benchmarks.{name}").main), name


def test_list_names_every_benchmark_with_its_first_docstring_line():
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--list"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    listed = dict(re.findall(r"^  (\w+) +(.+)$", out, re.MULTILINE))
    assert listed == catalogue()
    assert {"speed", "report", "gpu", "val_identity"} <= set(listed)
    assert all(listed.values())


def test_no_benchmark_touches_sys_path():
    offenders = [path.name for path in PACKAGE.glob("*.py") if "sys.path" in path.read_text(encoding="utf-8")]
    assert not offenders, f"import as `from benchmarks.X import ...` instead: {offenders}"


def test_write_record_states_how_the_record_was_made(tmp_path, monkeypatch, fixed_machine):
    monkeypatch.setattr(sys, "argv", ["anything", "--seeds", "2", "--data", "my text.txt"])
    path = common.write_record("speed", {"runs": [{"seed": 1, "val_loss": 1.5}]}, caches="cold",
                               out=tmp_path / "r.json", seeds=[1, 2], caches_note="fresh caches")
    record = json.loads(path.read_text())
    assert record["benchmark"] == "speed"
    assert record["command"] == "python -m benchmarks speed --seeds 2 --data 'my text.txt'"
    assert re.fullmatch(r"[0-9a-f]{40}", record["commit"]) and isinstance(record["dirty"], bool)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", record["date"])
    assert record["machine"]["matmul_peak_flops"] == {"float32": 1e11}
    assert {"cpu", "cpu_count", "cpu_flags", "native_bf16", "gpu"} <= record["machine"].keys()
    assert record["torch"] == torch.__version__
    assert (record["caches"], record["caches_note"], record["seeds"]) == ("cold", "fresh caches", [1, 2])
    assert record["runs"] == [{"seed": 1, "val_loss": 1.5}]


def test_write_record_defaults_to_results_and_refuses_what_it_cannot_state(tmp_path, monkeypatch, fixed_machine):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    assert common.write_record("muon", {"shapes": []}, caches="warm") == tmp_path / "muon.json"
    with pytest.raises(ValueError, match="caches"):
        common.write_record("muon", {}, caches="lukewarm")
    with pytest.raises(ValueError, match="commit"):
        common.write_record("muon", {"commit": "abc"}, caches="warm")


def test_report_renders_a_written_record(tmp_path, fixed_machine):
    summary = [common.summarise("1. to 1.8857", [12.0, 16.0, 17.0], 10.0, lower_is_better=False, unit="x",
                                run="characters", dtype="auto")]
    path = common.write_record("speed", {"runs": [{"run": "nanogpt-cpu", "seed": 1}], "summary": summary},
                               caches="cold", out=tmp_path / "speed.json")
    text = "\n".join(report.kind(path)(report.load(path)))
    assert f"- machine: {common.describe()}" in text and "measured matmul peaks: fp32 100 GFLOP/s" in text
    assert "- caches: cold" in text and f"- torch: {torch.__version__}" in text
    assert "| 1. to 1.8857 | characters | auto | 16.0 |" in text
    assert common.summary_line(summary[0]).endswith("vs target >= 10x: met")


def test_val_identity_shows_validation_figures_only(tmp_path, monkeypatch, capsys, fixed_machine):
    """A tuning tool (issue 26): it must never score, print or record the test questions."""
    splits = []
    monkeypatch.setattr("speedrun.loading.load_engine", lambda folder: folder)
    monkeypatch.setattr("speedrun.chat.conversations.make_items",
                        lambda task, split, n, seed: splits.append(split) or [split])
    monkeypatch.setattr("speedrun.chat.evaluate.evaluate_tasks", lambda engine, items, progress: {
        "tasks": {"identity": {"accuracy": 0.8, "constant": 0.4}}})
    monkeypatch.setattr(sys, "argv", ["val_identity", "runs/a", "runs/b", "--out", str(tmp_path / "v.json")])
    importlib.import_module("benchmarks.val_identity").main()
    assert splits == ["val", "val"]
    figures = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("record: ")]
    assert figures == ["runs/a val: identity 80% (constant 40%, margin +40)",
                       "runs/b val: identity 80% (constant 40%, margin +40)"]
    assert {row["split"] for row in json.loads((tmp_path / "v.json").read_text())["pipelines"]} == {"val"}


def test_speed_runs_a_row_in_the_precision_it_sets():
    speed = importlib.import_module("benchmarks.speed")
    assert speed.precisions("shakespeare-char", ["dtype=bfloat16"]) == ["bfloat16"]
    assert set(speed.ROUND_ONE_ABLATIONS).isdisjoint(label.split(": ")[-1] for label in speed.TO_TARGET)


def held_out(tmp_path, read, members, **kwargs) -> str:
    """A corpus of the files under `tmp_path`, extracted as generalize extracts a package."""
    corpus = corpora.Corpus("fake", "fake-doc", "1.0-1", members, read, "a test", "", **kwargs)
    return corpora.extract(corpus, tmp_path)


def test_corpora_extract_prose_from_html_and_gzip_by_one_rule(tmp_path):
    doc = tmp_path / "usr/share/doc/fake"
    doc.mkdir(parents=True)
    (doc / "b.html").write_text(
        "<html><head><title>Not text</title><style>p {}</style></head><body><h1>The caf\u00e9</h1>"
        "<p>\u201cIt\u2019s   open,\u201d she said\u2014at\t9&amp;10.</p><pre>$ rm -rf /\n</pre>"
        "<p>Second <code>line</code> \u2500\u2500 here</p><script>x = 1</script></body></html>", encoding="utf-8")
    (doc / "a.txt.gz").write_bytes(gzip.compress("  First\u00a0file \n\n\n\n\u00bd end\n".encode()))
    assert held_out(tmp_path, corpora.read_html, ("usr/share/doc/fake/*.html",)) == (
        "The cafe\n\n\"It's open,\" she said--at 9&10.\n\nSecond line here\n")
    assert held_out(tmp_path, corpora.read_text, ("usr/share/doc/fake/*.gz",)) == "First file\n\n12 end\n"
    text = held_out(tmp_path, corpora.read_text, ("usr/share/doc/fake/*",), exclude=("*.html",))
    assert text == held_out(tmp_path, corpora.read_text, ("usr/share/doc/fake/a.*",))
    with pytest.raises(SystemExit, match="no file matching"):
        held_out(tmp_path, corpora.read_text, ("usr/share/none/*",))


def test_corpora_read_fortunes_and_the_books_of_an_r_package(tmp_path):
    (tmp_path / "art").write_text("A quote.\n\t\t-- Someone\n%\nAnother.\n%\n")
    (tmp_path / "art.dat").write_bytes(b"\x00\x02index")
    assert held_out(tmp_path, corpora.read_fortunes, ("*",), exclude=("*.*",)) == (
        "A quote.\n-- Someone\n\nAnother.\n")

    def r_object(flags: int, strings: list[str | None]) -> bytes:
        """One object as R's lazy-load database stores it: serialized (XDR, version 3), zlib'd."""
        body = b"".join(struct.pack(">ii", 0x40009, -1) if s is None else
                        struct.pack(">ii", 0x40009, len(s.encode())) + s.encode() for s in strings)
        raw = b"X\n" + struct.pack(">iiii", 3, 0x40201, 0x30500, 5) + b"UTF-8" + struct.pack(">ii", flags, len(strings))
        return struct.pack(">I", len(raw + body)) + zlib.compress(raw + body)

    (tmp_path / "Rdata.rdb").write_bytes(r_object(16, ["EMMA", "Emma Woodhouse, handsome"]) +
                                         r_object(16 | 1 << 9, ["Named", "vector"]) +  # attributes: passed over
                                         r_object(16, ["Persuasion", "", None, "Sir Walter Elliot"]))
    read = corpora.functools.partial(corpora.read_r_books, ("Persuasion", "Emma"))
    assert held_out(tmp_path, read, ("Rdata.rdb",)) == (
        "Persuasion\n\nSir Walter Elliot\n\nEMMA\nEmma Woodhouse, handsome\n")
    with pytest.raises(SystemExit, match="no book titled Named"):
        corpora.read_r_books(("Named",), tmp_path / "Rdata.rdb")


def test_corpora_name_the_pinned_package_when_the_registry_lost_it(tmp_path, monkeypatch):
    failed = subprocess.CompletedProcess([], 100, "", "E: Version '1.0-1' for 'fake-doc' was not found\n")
    monkeypatch.setattr(corpora.subprocess, "run", lambda *args, **kwargs: failed)
    monkeypatch.setattr(corpora.shutil, "which", lambda name: f"/usr/bin/{name}")
    corpus = corpora.Corpus("fake", "fake-doc", "1.0-1", ("*",), corpora.read_text, "a test", "")
    with pytest.raises(SystemExit, match=r"fake-doc=1\.0-1 failed \(E: Version '1\.0-1' for 'fake-doc' was not "
                                         r"found\); .*snapshot\.debian\.org/package/fake-doc/1\.0-1/"):
        corpora.fetch(corpus, tmp_path)


def test_report_renders_a_generalize_record(tmp_path, fixed_machine):
    generalize = importlib.import_module("benchmarks.generalize")
    assert generalize.corpus_names("jargon,tinyshakespeare,jargon") == ["tinyshakespeare", "jargon"]
    figures = {(generalize.SPEEDUP, "tinyshakespeare", None, "float32"): [13.0, 11.0, 12.5],
               (generalize.SPEEDUP, "jargon", None, "float32"): [9.0, 11.0, 10.5],
               (generalize.SAME_WALL, "jargon", "shakespeare-bpe", "float32"): [1.5]}
    summary = generalize.summarised(figures)
    assert [row["verdict"] for row in summary[:2]] == ["met", "met"] and "verdict" not in summary[2]
    assert summary[0]["target"] == ">= 12" and summary[1]["target"] == ">= 10"
    corpus = {"name": "jargon", "package": "jargon-text", "version": "4.4.7-4.1", "what": "the Jargon File",
              "chars": 1487863, "distinct_chars": 96, "sha256": "5d7e"}
    path = common.write_record("generalize", {"corpora": [corpus], "runs": [{"run": "jargon: nanogpt-cpu",
                               "seed": 1, "corpus": "jargon", "val_loss": 1.9}], "summary": summary},
                               caches="cold", out=tmp_path / "generalize.json", seeds=[1, 2, 3])
    assert report.kind(path) is report.generalize
    text = "\n".join(report.kind(path)(report.load(path)))
    assert "- caches: cold" in text and "- seeds: 1; 2; 3" in text
    assert "| jargon | jargon-text | 4.4.7-4.1 | the Jargon File | 1,487,863 | 96 | 5d7e |" in text
    assert "| jargon: nanogpt-cpu | 1 | jargon | 1.9 |" in text
    assert f"| {generalize.SPEEDUP} | jargon | - | float32 | 10.5 | x | 9.0 | 11.0 | 3 | >= 10 | met |" in text


def test_gpu_dry_run_writes_its_record(tmp_path):
    """The GPU benchmark's steps, tiny, on this CPU (about 40 s on 2 cores)."""
    out = tmp_path / "gpu.json"
    env = {**os.environ, "SPEEDRUN_CACHE": str(tmp_path / "cache")}
    text = tmp_path / "shakespeare.txt"  # a clean clone has no ../shared beside it: generated text instead
    text.write_text("".join(f"CITIZEN {i}:\nWe are accounted poor citizens, the patricians good.\n\n"
                            for i in range(400)))
    run = subprocess.run([sys.executable, "-m", "benchmarks", "gpu", "--dry-run", "--workdir", str(tmp_path / "work"),
                          "--shakespeare", str(text), "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["command"].startswith("python -m benchmarks gpu --dry-run")
    assert record["caches"] == "warm" and record["dry_run"] is True
    assert {name: step["status"] for name, step in record["steps"].items()} == {
        "tests": "ok", "prepare": "ok", "gpt2": "ok", "shakespeare": "ok"}
