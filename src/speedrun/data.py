"""The data layer for training on your own text: split documents, build a tokenizer,
and tokenize once into a cached flat file of token ids.

    split_documents(docs, v, seed, t) train, validation and test documents (duplicates dropped)
    build_tokenizer(kind, docs)    a character or byte-level BPE tokenizer
    tokenize_cached(docs, tok)     np.memmap of ids, an end-of-document token after each document

Reading the documents (`load_documents`, `download`) is `sources`; its names are
importable from here too. Every problem the user can fix raises `DataError` with a
one-line message that names the problem and the fix.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from .sources import DataError, cache_root, download, jsonl_records, load_documents
from .tokenizer import EOT, BPETokenizer, CharTokenizer

__all__ = ["DataError", "build_tokenizer", "cache_root", "download", "jsonl_records", "load_documents",
           "split_documents", "token_dtype", "tokenize_cached", "unique_documents"]


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
