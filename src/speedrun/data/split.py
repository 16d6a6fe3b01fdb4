"""Which split a document belongs to, and which documents are copies of one already seen.

    split_of(text, seed, val, test)   0 train, 1 validation, 2 test: a salted hash of the text
    Digests                           the set of documents seen, as 8-byte digests, not texts
    cut_document(text, val, test)     one document cut contiguously into train | val | test
    split_documents(docs, ...)        (train, val, test) of a list, by the same two rules

A document's split depends on its text and `data.split_seed` alone, never on its
position or on how the corpus is sharded, so a corpus read in another order, or
grown by new files, keeps every old document where it was. A copy always lands
beside its original, so no text is scored that training saw.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .sources import DataError

TRAIN, VAL, TEST = 0, 1, 2
SPLITS = ("train", "val", "test")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= fraction < 1:
            raise DataError(f"data.{name} = {fraction} is out of range; use a value from 0 up to below 1, e.g. 0.1")
    if val_fraction + test_fraction >= 1:
        raise DataError(f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction} leaves no "
                        f"training text; keep their sum below 1, e.g. 0.05 and 0.05")


def digest(text: str, seed: int) -> bytes:
    """16 bytes of a keyed BLAKE2b of the text: the first 8 place it in a split, the last 8
    identify it among the documents seen."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16,
                           key=f"speedrun-split-{seed}".encode()).digest()


def split_of_digest(d: bytes, val_fraction: float, test_fraction: float) -> int:
    u = int.from_bytes(d[:8], "little") / 2.0 ** 64  # uniform in [0, 1)
    return VAL if u < val_fraction else TEST if u < val_fraction + test_fraction else TRAIN


def split_of(text: str, seed: int, val_fraction: float, test_fraction: float = 0.0) -> int:
    return split_of_digest(digest(text, seed), val_fraction, test_fraction)


class Digests:
    """The documents seen, kept as sorted 8-byte digests (8 bytes a document, where a set of
    texts would hold the corpus): `add` says whether a digest is new. New ones wait in a
    small set and are merged into the sorted array once that set is a quarter of its size,
    so merging costs O(n log n) in all."""

    def __init__(self, seen: np.ndarray | None = None):
        self.sorted = np.zeros(0, np.uint64) if seen is None else np.sort(seen.astype(np.uint64))
        self.recent: set[int] = set()

    def add(self, d: bytes) -> bool:
        key = int.from_bytes(d[8:], "little")
        if key in self.recent:
            return False
        i = np.searchsorted(self.sorted, key)
        if i < len(self.sorted) and int(self.sorted[i]) == key:
            return False
        self.recent.add(key)
        if len(self.recent) >= max(1 << 14, len(self.sorted) // 4):
            self.merge()
        return True

    def merge(self) -> None:
        if self.recent:
            new = np.fromiter(self.recent, np.uint64, len(self.recent))
            self.sorted = np.sort(np.concatenate([self.sorted, new]))
            self.recent = set()

    def array(self) -> np.ndarray:
        self.merge()
        return self.sorted

    def __len__(self) -> int:
        return len(self.sorted) + len(self.recent)


def _held_out_chars(fraction: float, n: int) -> int:
    """Characters for a held-out part of one document: at least one when asked for any."""
    count = round(fraction * n)
    return max(count, 1) if fraction > 0 and n > 1 else count


def cut_document(text: str, val_fraction: float, test_fraction: float) -> tuple[str, str, str]:
    """One document cut contiguously, train | val | test: the first 1 - val - test of its
    characters train, then validation, then test at the very end. nanoGPT trains Tiny
    Shakespeare on the first 90% and validates on the last 10%; with val_fraction =
    test_fraction = 0.05 training sees the same text and validation and test are the
    two halves of nanoGPT's validation split. Training keeps at least one character."""
    n = len(text)
    n_val = min(_held_out_chars(val_fraction, n), n - 1)
    n_test = max(0, min(_held_out_chars(test_fraction, n), n - 1 - n_val))
    val_start, test_start = n - n_val - n_test, n - n_test
    return text[:val_start], text[val_start:test_start], text[test_start:]


def unique_documents(docs: list[str]) -> list[str]:
    """The documents with exact copies dropped (the first kept, order kept)."""
    return list(dict.fromkeys(docs))


def split_documents(docs: list[str], val_fraction: float, seed: int,
                    test_fraction: float = 0.0) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) of documents in memory, by the rules a prepared dataset uses:
    one document is cut contiguously (`cut_document`); several are placed by `split_of`
    after exact copies are dropped, each side keeping the input order."""
    check_fractions(val_fraction, test_fraction)
    if not docs:
        raise DataError("there are no documents to split; give a data source that contains text")
    if len(docs) == 1:
        return tuple([part] if part else [] for part in cut_document(docs[0], val_fraction, test_fraction))
    sides: tuple[list[str], list[str], list[str]] = ([], [], [])
    for doc in unique_documents(docs):
        sides[split_of(doc, seed, val_fraction, test_fraction)].append(doc)
    return sides
