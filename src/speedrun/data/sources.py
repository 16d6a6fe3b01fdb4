"""Where training text comes from: documents streamed from files, folders, globs, JSONL,
parquet, saved or hub datasets, and files fetched once from a URL.

    iter_documents(source)   documents one at a time, read in batches: never the whole corpus
    load_documents(source)   the same as a list, for corpora that fit in memory
    fingerprint(source)      a cheap identity of the source (sizes, mtimes, sampled bytes)
    download(url)            a file fetched once into the cache

Every problem the user can fix raises `DataError` with a one-line message that
names the problem and the fix.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

JSONL_SUFFIXES = {".jsonl", ".jsonlines", ".ndjson", ".json"}
# What a directory contributes; .json is left out, as folders often hold .json metadata.
FILE_SUFFIXES = {".txt", ".parquet", ".jsonl", ".jsonlines", ".ndjson"}
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")
PARQUET_BATCH_ROWS = 1024  # rows read at a time from parquet and datasets
SAMPLE = 1 << 16  # bytes of each sample a fingerprint digests


class DataError(ValueError):
    """A problem with the user's data that the user can fix."""


def cache_root(cache_dir: str = "") -> Path:
    return Path(cache_dir or os.environ.get("SPEEDRUN_CACHE") or Path.home() / ".cache" / "speedrun").expanduser()


def load_documents(source: str, text_field: str = "text", doc_per_line: bool = False,
                   hf_split: str = "train") -> list[str]:
    """Every document of `source` as a list (see `iter_documents`); one with no text is an error."""
    docs = list(iter_documents(source, text_field, doc_per_line, hf_split))
    if not docs:
        raise no_text(source)
    return docs


def no_text(source: str) -> DataError:
    return DataError(f"{source} has no text (every file, line or record is empty); "
                     f"give a source that contains text")


def iter_documents(source: str, text_field: str = "text", doc_per_line: bool = False,
                   hf_split: str = "train") -> Iterator[str]:
    """Documents from a file, directory, glob, JSONL, parquet, saved or hub dataset, streamed.

    Text files are one document each, or one per non-empty line with
    `doc_per_line`; JSONL records, parquet rows and dataset rows are one document
    each, read from `text_field`. A directory contributes every .txt, .jsonl and
    .parquet file below it (outside hidden folders), a glob every file it
    matches, both sorted by path. Blank documents are dropped. JSONL and
    line-per-document text are read line by line, parquet and datasets in record
    batches, so memory holds one batch, never the corpus.
    """
    if source.startswith("hf:"):
        name, _, config = source[3:].partition(":")
        docs = _iter_hub(name, config, hf_split, text_field)
    elif (saved := _saved_dataset(source)) is not None:
        docs = _iter_saved_dataset(saved, hf_split, text_field)
    else:
        docs = (d for f in source_files(source) for d in _iter_file(f, text_field, doc_per_line))
    return (d for d in docs if d and not d.isspace())


def _saved_dataset(source: str) -> Path | None:
    path = Path(source).expanduser()
    if path.is_dir() and any((path / f).exists() for f in SAVED_DATASET_FILES):
        return path
    return None


def fingerprint(source: str, hf_split: str = "train") -> dict:
    """What identifies the source without reading it all: each file's path, size, mtime and
    a digest of three 64 KiB samples (start, middle, end); a hub dataset by name and split.
    A changed, added or removed file changes it; so does an edit that keeps the size."""
    if source.startswith("hf:"):
        return {"hub": source, "split": hf_split}
    saved = _saved_dataset(source)
    files = sorted(p for p in saved.rglob("*") if p.is_file()) if saved else source_files(source)
    entries = []
    for f in files:
        st = f.stat()
        h = hashlib.blake2b(digest_size=16)
        with f.open("rb") as fh:
            for offset in sorted({0, max(0, st.st_size // 2 - SAMPLE // 2), max(0, st.st_size - SAMPLE)}):
                fh.seek(offset)
                h.update(fh.read(SAMPLE))
        entries.append([str(f.resolve()), st.st_size, st.st_mtime_ns, h.hexdigest()])
    return {"files": entries}


def source_bytes(source: str) -> int | None:
    """Bytes on disk behind the source, for a progress bar's total; None for a hub dataset."""
    if source.startswith("hf:"):
        return None
    saved = _saved_dataset(source)
    files = sorted(p for p in saved.rglob("*.arrow")) if saved else source_files(source)
    return sum(f.stat().st_size for f in files)


def source_files(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in FILE_SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"directory {source} has no .txt, .jsonl or .parquet files; "
                            f"put your text in .txt files there or pass a file")
        return files
    if any(c in source for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"no files match {source}; check the pattern (quote it so the shell leaves it alone)")
        return files
    raise DataError(f"data source {source} does not exist; pass an existing file, directory or glob, "
                    f"or hf:NAME for a Hugging Face dataset")


def _iter_file(path: Path, text_field: str, doc_per_line: bool) -> Iterator[str]:
    if path.suffix == ".parquet":
        yield from _iter_parquet(path, text_field)
    elif path.suffix == ".json" and _starts_with_bracket(path):
        yield from _parse_json_array(_read_text(path), path, text_field)
    elif path.suffix in JSONL_SUFFIXES:
        yield from (_record_text(record, text_field, f"{path} line {n}")
                    for n, record in jsonl_records(_iter_lines(path), path, f'{{"{text_field}": "..."}}'))
    elif doc_per_line:
        yield from _iter_lines(path)
    else:
        yield _read_text(path)


def _starts_with_bracket(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4096).lstrip().lstrip(b"\xef\xbb\xbf").startswith(b"[")


def _iter_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file without their line ends, read a block at a time."""
    offset = 0
    with path.open("rb") as f:
        for n, raw in enumerate(f):
            if n == 0:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            yield _decode(raw, path, offset).removesuffix("\n").removesuffix("\r")
            offset += len(raw)


def _decode(data: bytes, path: Path, offset: int = 0) -> str:
    nul = data.find(b"\0")
    if nul >= 0:
        raise DataError(f"{path} looks binary (NUL byte at offset {offset + nul}); give a UTF-8 text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 (byte 0x{data[e.start]:02x} at offset {offset + e.start}); "
                        f"convert it, e.g. iconv -f latin1 -t utf-8 {path} > utf8.txt") from None


def _read_text(path: Path) -> str:
    return _decode(path.read_bytes(), path).removeprefix("\ufeff")


def _parse_json_array(text: str, path: Path, field: str) -> list[str]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); "
                        f"give a JSON array or one JSON object per line") from None
    return [_record_text(r, field, f"{path} record {i}") for i, r in enumerate(records)]


def jsonl_records(lines, path, example: str, error: type[Exception] = DataError):
    """(line number, parsed value) for each non-blank line of JSONL (`lines`: the text, or an
    iterable of its lines); a line that is not JSON raises `error` naming it and showing
    `example`, what a line should look like."""
    if isinstance(lines, str):
        lines = lines.split("\n")
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path} line {n} is not JSON ({e.msg}); each line must be one object "
                        f"like {example}") from None
        yield n, record


def _record_text(record, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where} is a JSON {type(record).__name__}, not an object; "
                        f"each record must look like {{\"{field}\": \"...\"}}")
    if field not in record:
        raise DataError(f"{where} has no field {field!r} (fields: {', '.join(map(str, record)) or 'none'}); "
                        f"set data.text_field to the field that holds the text")
    value = record[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where} field {field!r} is a {type(value).__name__}, not a string; "
                        f"set data.text_field to the field that holds the text")
    return value


def _first_line(e: Exception) -> str:
    """An exception's message cut to one line, for a one-line DataError."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _column_texts(column, columns: list[str], field: str, where: str) -> list[str]:
    """The strings of an Arrow column (or array), with None as an empty document."""
    import pyarrow as pa

    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(f"{where} column {field!r} holds {column.type}, not text; "
                        f"set data.text_field to a text column (columns: {', '.join(columns)})")
    return [v or "" for v in column.to_pylist()]


def _missing_column(where: str, field: str, columns: list[str]) -> DataError:
    return DataError(f"{where} has no column {field!r} (columns: {', '.join(columns)}); "
                     f"set data.text_field to the column that holds the text")


def _iter_parquet(path: Path, field: str) -> Iterator[str]:
    """A parquet file's text column, one record batch at a time (FineWeb's shards hold
    ~1 GB of text each: reading a whole one would hold it all)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def unreadable(e: Exception) -> DataError:
        return DataError(f"{path} is not a readable parquet file ({_first_line(e)}); check the file or convert it")

    try:
        parquet = pq.ParquetFile(path)
        columns = parquet.schema_arrow.names
    except (pa.ArrowException, OSError) as e:
        raise unreadable(e) from None
    if field not in columns:
        raise _missing_column(str(path), field, columns)
    batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[field])
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise unreadable(e) from None
        yield from _column_texts(batch.column(0), columns, field, str(path))


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("reading Hugging Face datasets needs the `datasets` library; "
                        "pip install 'speedrun[hf]'") from None
    return datasets


def _dataset_texts(ds, field: str, where: str) -> Iterator[str]:
    """A dataset's text column, a batch of rows at a time (datasets memory-maps its Arrow files)."""
    if field not in ds.column_names:
        raise _missing_column(where, field, ds.column_names)
    arrow = ds.with_format("arrow")
    for start in range(0, len(ds), PARQUET_BATCH_ROWS):
        yield from _column_texts(arrow[start:start + PARQUET_BATCH_ROWS][field], ds.column_names, field, where)


def _pick_split(ds, split: str, where: str):
    if hasattr(ds, "keys"):  # a DatasetDict
        if split not in ds:
            raise DataError(f"{where} has no split {split!r} (splits: {', '.join(ds)}); set data.hf_split")
        return ds[split]
    return ds


def _load_saved(path: Path, split: str):
    """A folder saved with `save_to_disk`, the split picked from a DatasetDict."""
    datasets = _import_datasets()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many kinds; all mean "not a usable saved dataset"
        raise DataError(f"{path} could not be read as a saved dataset ({_first_line(e)}); "
                        f"save it again with Dataset.save_to_disk") from None
    return _pick_split(ds, split, str(path))


def _load_hub(name: str, config: str, split: str, fix: str):
    """A hub dataset's split; `fix` ends the error's advice (where the split is set, what else to give)."""
    datasets = _import_datasets()
    if not name:
        raise DataError("hf: has no dataset name; write hf:NAME or hf:NAME:CONFIG, e.g. hf:roneneldan/TinyStories")
    try:
        return datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # network, unknown name, unknown config or split
        raise DataError(f"could not load hub dataset {name!r} ({_first_line(e)}); check the name, config and "
                        f"{fix}") from None


def _iter_saved_dataset(path: Path, split: str, field: str) -> Iterator[str]:
    yield from _dataset_texts(_load_saved(path, split), field, str(path))


def _iter_hub(name: str, config: str, split: str, field: str) -> Iterator[str]:
    ds = _load_hub(name, config, split, "data.hf_split, or download it and pass --data PATH")
    yield from _dataset_texts(ds, field, f"hf:{name}")


def dataset_rows(source: str, field: str, split: str = "train") -> Iterator | None:
    """The values of column `field`, row by row, of a hub dataset (hf:NAME or hf:NAME:CONFIG)
    or a folder saved with `save_to_disk`; None when `source` is neither (a file to read)."""
    if source.startswith("hf:"):
        name, _, config = source[3:].partition(":")
        ds = _load_hub(name, config, split, "split, or download it and give the folder")
    elif (saved := _saved_dataset(source)) is not None:
        ds = _load_saved(saved, split)
    else:
        return None
    if field not in ds.column_names:
        raise _missing_column(source, field, ds.column_names)
    return (row[field] for row in ds)


def download_path(url: str, cache_dir: str = "") -> Path:
    """Where `download` keeps `url` in the cache."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[:100] or "download"
    return cache_root(cache_dir) / "downloads" / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{base}"


def download(url: str, cache_dir: str = "") -> Path:
    """Fetch `url` once into the cache and return the local file."""
    path = download_path(url, cache_dir)
    if path.is_file():
        return path
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                f.write(chunk)
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"could not download {url} ({reason}); check the address and your network, "
                        f"or download the file yourself and pass --data PATH") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
