"""speedrun.data.sources: documents from files, folders, globs, JSONL, parquet, datasets and
downloads, and the one-line DataError for each thing the user can fix."""

import json
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speedrun.data.sources import DataError, download, load_documents


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path, records):
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def error(match, fn, *args, **kwargs) -> str:
    """The DataError message, checked to be one line that says what to do."""
    with pytest.raises(DataError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and ";" in message
    return message


# ---------------------------------------------------------------- sources

def test_text_file_is_one_document(tmp_path):
    f = write(tmp_path / "shakespeare.txt", "First Citizen:\nBefore we proceed\n\nSpeak.\n")
    assert load_documents(str(f)) == ["First Citizen:\nBefore we proceed\n\nSpeak.\n"]


def test_doc_per_line_keeps_non_empty_lines(tmp_path):
    f = write(tmp_path / "lines.txt", "one\r\ntwo\n\n   \nthree")
    assert load_documents(str(f), doc_per_line=True) == ["one", "two", "three"]


def test_directory_reads_every_txt_below_it_sorted(tmp_path):
    write(tmp_path / "b.txt", "bee")
    write(tmp_path / "a" / "z.txt", "zed")
    write(tmp_path / "c.txt", "sea\nsee")
    write(tmp_path / "notes.md", "not text data")
    write(tmp_path / "meta.json", "{}")
    write(tmp_path / ".git" / "x.txt", "hidden")
    assert load_documents(str(tmp_path)) == ["zed", "bee", "sea\nsee"]
    assert load_documents(str(tmp_path), doc_per_line=True) == ["zed", "bee", "sea", "see"]


def test_glob_pattern(tmp_path):
    for name in ("2.txt", "1.txt", "x.log"):
        write(tmp_path / name, name)
    assert load_documents(str(tmp_path / "*.txt")) == ["1.txt", "2.txt"]


def test_jsonl_one_document_per_record(tmp_path):
    f = jsonl(tmp_path / "d.jsonl", [{"text": "alpha", "id": 1}, {"text": "beta\n"}, {"text": ""}])
    assert load_documents(str(f)) == ["alpha", "beta\n"]
    g = jsonl(tmp_path / "e.jsonl", [{"story": "once"}, {"story": "upon"}])
    assert load_documents(str(g), text_field="story") == ["once", "upon"]


def test_json_array(tmp_path):
    f = write(tmp_path / "d.json", json.dumps([{"text": "a"}, {"text": "b"}]))
    assert load_documents(str(f)) == ["a", "b"]


def test_parquet_one_document_per_row(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["row one", None, "row two"], "n": [1, 2, 3]}), f)
    assert load_documents(str(f)) == ["row one", "row two"]
    assert load_documents(str(tmp_path)) == ["row one", "row two"]


def test_saved_hugging_face_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"content": ["first story", "second story"], "n": [1, 2]})
    ds.save_to_disk(str(tmp_path / "one"))
    assert load_documents(str(tmp_path / "one"), text_field="content") == ["first story", "second story"]
    datasets.DatasetDict(train=ds, validation=ds.select([1])).save_to_disk(str(tmp_path / "dict"))
    assert load_documents(str(tmp_path / "dict"), text_field="content", hf_split="validation") == ["second story"]
    message = error("no column 'text'", load_documents, str(tmp_path / "one"))
    assert "content, n" in message
    error("no split 'test'.*train, validation", load_documents, str(tmp_path / "dict"),
          text_field="content", hf_split="test")


def test_hub_dataset_name_config_and_split(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"text": ["from the hub"]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert load_documents("hf:user/stories:small", hf_split="validation") == ["from the hub"]
    assert load_documents("hf:user/stories") == ["from the hub"]
    assert calls == [("user/stories", "small", "validation"), ("user/stories", None, "train")]


def test_hub_failure_offline_says_to_pass_a_path(monkeypatch):
    def load_dataset(name, config, split):
        raise ConnectionError("Couldn't reach 'user/stories' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    message = error("could not load hub dataset 'user/stories'", load_documents, "hf:user/stories")
    assert "Couldn't reach" in message and "--data PATH" in message


def test_hub_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    error(r"pip install 'speedrun\[hf\]'", load_documents, "hf:roneneldan/TinyStories")


# ---------------------------------------------------------------- bad inputs

def test_missing_path(tmp_path):
    error("does not exist.*hf:NAME", load_documents, str(tmp_path / "nope.txt"))


def test_glob_without_matches(tmp_path):
    error("no files match", load_documents, str(tmp_path / "*.txt"))


def test_empty_file_and_empty_directory(tmp_path):
    error("has no text", load_documents, str(write(tmp_path / "empty.txt", "")))
    error("has no text", load_documents, str(write(tmp_path / "blank.txt", "\n  \n")), doc_per_line=True)
    (tmp_path / "dir").mkdir()
    error("no .txt, .jsonl or .parquet files", load_documents, str(tmp_path / "dir"))


def test_binary_file(tmp_path):
    f = tmp_path / "model.txt"
    f.write_bytes(b"abc\x00\x01\x02")
    error(r"model.txt looks binary \(NUL byte at offset 3\)", load_documents, str(f))


def test_non_utf8_file_names_the_offset_and_suggests_converting(tmp_path):
    f = tmp_path / "latin.txt"
    f.write_bytes("café au lait".encode("latin-1"))
    message = error(r"latin.txt is not UTF-8 \(byte 0xe9 at offset 3\)", load_documents, str(f))
    assert "iconv" in message


def test_utf8_byte_order_mark_is_dropped(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes("\ufeffhello".encode("utf-8"))
    assert load_documents(str(f)) == ["hello"]


def test_jsonl_bad_line_and_missing_field_name_the_line(tmp_path):
    f = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n\n{"text": oops}\n')
    error("bad.jsonl line 3 is not JSON", load_documents, str(f))
    g = jsonl(tmp_path / "field.jsonl", [{"text": "ok"}, {"body": "x", "title": "y"}])
    message = error("field.jsonl line 2 has no field 'text'", load_documents, str(g))
    assert "fields: body, title" in message and "data.text_field" in message
    h = jsonl(tmp_path / "type.jsonl", [{"text": 3}])
    error("is a int, not a string", load_documents, str(h))


def test_parquet_missing_or_non_text_column_lists_the_columns(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": ["x"], "n": [1]}), f)
    message = error("no column 'text'", load_documents, str(f))
    assert "columns: body, n" in message
    error("holds int64, not text", load_documents, str(f), text_field="n")


# ---------------------------------------------------------------- download

def test_download_caches_once(tmp_path, monkeypatch):
    src = write(tmp_path / "input.txt", "to be or not to be")
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    path = download(src.as_uri())
    assert path.read_text() == "to be or not to be" and path.is_relative_to(tmp_path / "cache")
    assert path.name.endswith("input.txt")
    src.unlink()
    assert download(src.as_uri()) == path  # reused, not fetched again
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left


def test_download_failure_says_to_pass_a_path(tmp_path):
    message = error("could not download", download, (tmp_path / "missing.txt").as_uri(), str(tmp_path / "c"))
    assert "--data PATH" in message
    assert not any((tmp_path / "c" / "downloads").iterdir())




DOCS = st.lists(st.text(min_size=1, max_size=30).filter(lambda t: not t.isspace()), min_size=1, max_size=20)


@settings(max_examples=40, deadline=None)
@given(DOCS)
def test_jsonl_and_parquet_give_back_every_document(tmp_path_factory, docs):
    folder = tmp_path_factory.mktemp("prop")
    jsonl = folder / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    assert load_documents(str(jsonl)) == docs
    parquet = folder / "docs.parquet"
    pq.write_table(pa.table({"text": docs}), parquet)
    assert load_documents(str(parquet)) == docs
