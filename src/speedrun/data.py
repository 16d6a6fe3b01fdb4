"""The data layer for training on your own text: load documents, split them,
build a tokenizer, and tokenize once into a cached flat file of token ids.

    load_documents(source)         text files, a directory, a glob, JSONL, parquet, hf:NAME
    download(url)                  a file fetched once into the cache
    split_documents(docs, v, seed, t) train, validation and test documents (duplicates dropped)
    build_tokenizer(kind, docs)    a character or byte-level BPE tokenizer
    tokenize_cached(docs, tok)     np.memmap of ids, an end-of-document token after each document

Every problem the user can fix raises `DataError` with a one-line message that
names the problem and the fix.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .tokenizer import EOT, BPETokenizer, CharTokenizer

JSONL_SUFFIXES = {".jsonl", ".jsonlines", ".ndjson", ".json"}
# What a directory contributes; .json is left out, as folders often hold .json metadata.
FILE_SUFFIXES = {".txt", ".parquet", ".jsonl", ".jsonlines", ".ndjson"}
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")


class DataError(ValueError):
    """A problem with the user's data that the user can fix."""


def cache_root(cache_dir: str = "") -> Path:
    return Path(cache_dir or os.environ.get("SPEEDRUN_CACHE") or Path.home() / ".cache" / "speedrun").expanduser()


# ---------------------------------------------------------------- loading

def load_documents(source: str, text_field: str = "text", doc_per_line: bool = False,
                   hf_split: str = "train") -> list[str]:
    """Documents from a file, directory, glob, JSONL, parquet, saved or hub dataset.

    Text files are one document each, or one per non-empty line with
    `doc_per_line`; JSONL records, parquet rows and dataset rows are one document
    each, read from `text_field`. A directory contributes every .txt, .jsonl and
    .parquet file below it (outside hidden folders), a glob every file it
    matches, both sorted by path. Blank documents are dropped.
    """
    if source.startswith("hf:"):
        name, _, config = source[3:].partition(":")
        docs = _load_hub(name, config, hf_split, text_field)
    else:
        path = Path(source).expanduser()
        if path.is_dir() and any((path / f).exists() for f in SAVED_DATASET_FILES):
            docs = _load_saved_dataset(path, hf_split, text_field)
        else:
            docs = [d for f in _files(source) for d in _load_file(f, text_field, doc_per_line)]
    docs = [d for d in docs if d and not d.isspace()]
    if not docs:
        raise DataError(f"{source} has no text (every file, line or record is empty); "
                        f"give a source that contains text")
    return docs


def _files(source: str) -> list[Path]:
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


def _load_file(path: Path, text_field: str, doc_per_line: bool) -> list[str]:
    if path.suffix == ".parquet":
        return _load_parquet(path, text_field)
    text = _read_text(path)
    if path.suffix in JSONL_SUFFIXES:
        return _parse_jsonl(text, path, text_field)
    if doc_per_line:
        return [line.removesuffix("\r") for line in text.split("\n")]
    return [text]


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise DataError(f"{path} looks binary (NUL byte at offset {nul}); give a UTF-8 text file")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); convert it, "
                        f"e.g. iconv -f latin1 -t utf-8 {path} > utf8.txt") from None


def _parse_jsonl(text: str, path: Path, field: str) -> list[str]:
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e}); "
                            f"give a JSON array or one JSON object per line") from None
        return [_record_text(r, field, f"{path} record {i}") for i, r in enumerate(records)]
    return [_record_text(record, field, f"{path} line {n}")
            for n, record in jsonl_records(text, path, f'{{"{field}": "..."}}')]


def jsonl_records(text: str, path, example: str, error: type[Exception] = DataError):
    """(line number, parsed value) for each non-blank line of JSONL; a line that is not
    JSON raises `error` naming it and showing `example`, what a line should look like."""
    for n, line in enumerate(text.split("\n"), start=1):
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
    """The strings of an Arrow column, with None as an empty document."""
    import pyarrow as pa

    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(f"{where} column {field!r} holds {column.type}, not text; "
                        f"set data.text_field to a text column (columns: {', '.join(columns)})")
    return [v or "" for v in column.to_pylist()]


def _missing_column(where: str, field: str, columns: list[str]) -> DataError:
    return DataError(f"{where} has no column {field!r} (columns: {', '.join(columns)}); "
                     f"set data.text_field to the column that holds the text")


def _load_parquet(path: Path, field: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        columns = pq.read_schema(path).names
        if field not in columns:
            raise _missing_column(str(path), field, columns)
        column = pq.read_table(path, columns=[field]).column(field)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path} is not a readable parquet file ({_first_line(e)}); "
                        f"check the file or convert it") from None
    return _column_texts(column, columns, field, str(path))


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("reading Hugging Face datasets needs the `datasets` library; "
                        "pip install 'speedrun[hf]'") from None
    return datasets


def _dataset_texts(ds, field: str, where: str) -> list[str]:
    if field not in ds.column_names:
        raise _missing_column(where, field, ds.column_names)
    return _column_texts(ds.with_format("arrow")[field], ds.column_names, field, where)


def _pick_split(ds, split: str, where: str):
    if hasattr(ds, "keys"):  # a DatasetDict
        if split not in ds:
            raise DataError(f"{where} has no split {split!r} (splits: {', '.join(ds)}); set data.hf_split")
        return ds[split]
    return ds


def _load_saved_dataset(path: Path, split: str, field: str) -> list[str]:
    datasets = _import_datasets()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many kinds; all mean "not a usable saved dataset"
        raise DataError(f"{path} could not be read as a saved dataset ({_first_line(e)}); "
                        f"save it again with Dataset.save_to_disk") from None
    return _dataset_texts(_pick_split(ds, split, str(path)), field, str(path))


def _load_hub(name: str, config: str, split: str, field: str) -> list[str]:
    datasets = _import_datasets()
    if not name:
        raise DataError("hf: has no dataset name; write hf:NAME or hf:NAME:CONFIG, e.g. hf:roneneldan/TinyStories")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # network, unknown name, unknown config or split
        raise DataError(f"could not load hub dataset {name!r} ({_first_line(e)}); check the name, config and "
                        f"data.hf_split, or download it and pass --data PATH") from None
    return _dataset_texts(ds, field, f"hf:{name}")


def download(url: str, cache_dir: str = "") -> Path:
    """Fetch `url` once into the cache and return the local file."""
    folder = cache_root(cache_dir) / "downloads"
    base = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[:100] or "download"
    path = folder / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{base}"
    if path.is_file():
        return path
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


# ---------------------------------------------------------------- splitting

def unique_documents(docs: list[str]) -> list[str]:
    """The documents with exact copies dropped (the first kept, order kept): a copy on
    both sides of a split would be scored on text the model was trained on."""
    return list(dict.fromkeys(docs))


def _held_out_count(fraction: float, n: int) -> int:
    """Documents or characters for a held-out split: at least one when asked for any."""
    count = round(fraction * n)
    return max(count, 1) if fraction > 0 and n > 1 else count


def split_documents(docs: list[str], val_fraction: float, seed: int,
                    test_fraction: float = 0.0) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test): val is what training and tuning look at, test what the final
    figures are reported on.

    Several documents: exact duplicates are dropped first (`unique_documents`), then a
    seeded permutation picks validation documents (the first val_fraction of it) and
    test documents (the next test_fraction), each side keeping the input order; the
    validation documents do not depend on test_fraction. One document is cut
    contiguously, train | val | test: the first 1 - val_fraction - test_fraction of
    its characters train, then validation, then test at the very end. nanoGPT trains
    Tiny Shakespeare on the first 90% and validates on the last 10%; with
    val_fraction = test_fraction = 0.05 training sees the same text and validation
    and test are the two halves of nanoGPT's validation split."""
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= fraction < 1:
            raise DataError(f"data.{name} = {fraction} is out of range; use a value from 0 up to below 1, e.g. 0.1")
    if val_fraction + test_fraction >= 1:
        raise DataError(f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction} leaves no "
                        f"training text; keep their sum below 1, e.g. 0.05 and 0.05")
    if not docs:
        raise DataError("there are no documents to split; give a data source that contains text")
    single = len(docs) == 1
    if not single:
        docs = unique_documents(docs)
    n = len(docs[0]) if single else len(docs)
    # training keeps at least one document or character
    n_val = min(_held_out_count(val_fraction, n), n - 1)
    n_test = max(0, min(_held_out_count(test_fraction, n), n - 1 - n_val))
    if single:
        val_start, test_start = n - n_val - n_test, n - n_test
        text = docs[0]
        return ([text[:val_start]], [text[val_start:test_start]] if n_val else [],
                [text[test_start:]] if n_test else [])
    order = np.random.default_rng(seed).permutation(n)
    val_idx, test_idx = set(order[:n_val].tolist()), set(order[n_val:n_val + n_test].tolist())
    train = [d for i, d in enumerate(docs) if i not in val_idx and i not in test_idx]
    return train, [docs[i] for i in sorted(val_idx)], [docs[i] for i in sorted(test_idx)]


# ---------------------------------------------------------------- tokenizing

def build_tokenizer(kind: str, train_docs: list[str], vocab_size: int = 4096, special_tokens: list[str] = ()):
    """A tokenizer fitted to `train_docs`, with "<|endoftext|>" as end of document."""
    if kind == "char":
        chars: set[str] = set()
        for doc in train_docs:
            chars.update(doc)
        return CharTokenizer(sorted(chars), eot=EOT, specials=list(special_tokens))
    if kind == "bpe":
        n_special = len({EOT, *special_tokens})
        if vocab_size < 256 + n_special:
            raise DataError(f"data.vocab_size = {vocab_size} is too small for byte-level BPE; "
                            f"use at least {256 + n_special} (256 bytes + special tokens), e.g. 4096")
        return BPETokenizer.train(train_docs, vocab_size, list(special_tokens), progress=sys.stderr.isatty())
    raise DataError(f"unknown tokenizer {kind!r}; use 'char' or 'bpe'")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _cache_key(docs: list[str], tok, lead_eot: bool) -> str:
    h = hashlib.sha256(b"speedrun-tokens-1\0")
    if lead_eot:
        h.update(b"lead-eot\0")
    h.update(tok.to_json().encode())
    for doc in docs:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:20]


def tokenize_cached(docs: list[str], tok, cache_dir: str = "", name: str = "",
                    lead_eot: bool = False) -> np.memmap:
    """Encode each document followed by the end-of-document token into one flat
    array, stored in the cache under a hash of the documents and the tokenizer so
    the next run with the same data reads it back instead of encoding again.

    `lead_eot` puts an end-of-document token first too. Evaluation splits use it: a
    window's first token is only context, never a target, so without it the split's
    first token would go unscored; after it, that token is scored in the context
    every training document starts in."""
    from tqdm import tqdm

    if not docs:
        raise DataError("there are no documents to tokenize; give a data source that contains text")
    if tok.eot_id is None:
        raise ValueError("the tokenizer has no end-of-document token (eot)")
    dtype = token_dtype(tok.vocab_size)
    folder = cache_root(cache_dir) / "tokens"
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "tokens"
    path = folder / f"{stem}-{_cache_key(docs, tok, lead_eot)}-{dtype.name}.bin"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        n_chars = sum(map(len, docs))
        show = n_chars > 1_000_000 and sys.stderr.isatty()
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as f, tqdm(total=n_chars, unit="char", unit_scale=True,
                                                 desc=f"tokenizing {name}".strip(), disable=not show) as bar:
                if lead_eot:
                    np.asarray([tok.eot_id], dtype=dtype).tofile(f)
                for doc in docs:
                    ids = tok.encode(doc)
                    ids.append(tok.eot_id)
                    np.asarray(ids, dtype=dtype).tofile(f)
                    bar.update(len(doc))
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return np.memmap(path, dtype=dtype, mode="r")
