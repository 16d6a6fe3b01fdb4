"""Tokenizers fitted to a corpus on a budget, and the fastest encoder for one.

    build_tokenizer(kind, docs, ...)   a character or byte-level BPE tokenizer from an iterator
    batch_encoder(tok)                 a function: list of texts -> list of id lists
    token_dtype(vocab_size)            uint16 or uint32

BPE learns from at most `max_chars` characters of the training documents it is
given (`data.tokenizer_chars`; nanochat's is 2 billion), streamed, so its memory
is the word counts the trainer keeps, not the text.

Encoding: `tokenizers` (Rust, Hugging Face) trains the BPE; `tiktoken` (Rust,
OpenAI) encodes it, given the same merges as ranks, about 2.2x faster on 2 cores
(15.9 MB/s against `encode_batch`'s 7.4 MB/s on a Zen 4 EPYC, results/data.json). Both read GPT-2's pre-tokenizer pattern; tiktoken merges by the rank of
the merged bytes, which for a tokenizer whose ids are in merge order gives the
same ids, and `batch_encoder` checks that on a sample before using it, falling
back to `tokenizers` when a single id differs or tiktoken is not installed.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable, Iterator

import numpy as np

from ..tokenizer import EOT, BPETokenizer, CharTokenizer
from .sources import DataError

# GPT-2's pre-tokenizer, the one `tokenizers`' ByteLevel(use_regex=True) applies
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def within_budget(docs: Iterable[str], max_chars: int) -> Iterator[str]:
    """The documents until `max_chars` characters have been given (0: all); the last one is cut."""
    left = max_chars
    for doc in docs:
        if max_chars and left <= 0:
            return
        yield doc if not max_chars or len(doc) <= left else doc[:left]
        left -= len(doc)


def build_tokenizer(kind: str, train_docs: Iterable[str], vocab_size: int = 4096,
                    special_tokens: list[str] = (), max_chars: int = 0, progress: bool | None = None):
    """A tokenizer fitted to `train_docs`, with "<|endoftext|>" as end of document."""
    progress = sys.stderr.isatty() if progress is None else progress
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
        return BPETokenizer.train(within_budget(train_docs, max_chars), vocab_size, list(special_tokens),
                                  progress=progress)
    raise DataError(f"unknown tokenizer {kind!r}; use 'char' or 'bpe'")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character each byte is spelled with, inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _tiktoken_encoding(tok: BPETokenizer):
    """The tokenizer's merges as a tiktoken Encoding (ids as ranks), or None when it is not
    plain byte-level BPE with GPT-2's pattern (e.g. the chat tokenizer's digit splitting)."""
    try:
        import tiktoken
    except ImportError:
        return None
    import json

    spec = json.loads(tok._tok.to_str())
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        return None
    bytes_of = _byte_decoder()
    specials = set(tok.special_ids)
    ranks = {bytes(bytes_of[c] for c in token): i for token, i in tok._tok.get_vocab().items() if token not in specials}
    return tiktoken.Encoding("speedrun", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})


def batch_encoder(tok, sample: list[str] = ()) -> tuple[Callable[[list[str]], list[list[int]]], str]:
    """(encode, name): the fastest encoder that gives `tok.encode`'s ids on `sample`; special-token
    strings in the text are encoded as plain text, as `tok.encode` does."""
    if isinstance(tok, BPETokenizer):
        encoding = _tiktoken_encoding(tok)
        if encoding is not None:
            def fast(texts: list[str]) -> list[list[int]]:
                return encoding.encode_ordinary_batch(texts)

            if all(fast([s])[0] == tok.encode(s) for s in sample):
                return fast, "tiktoken"
        plain = tok._plain
        return (lambda texts: [e.ids for e in plain.encode_batch(texts, add_special_tokens=False)]), "tokenizers"
    return (lambda texts: [tok.encode(t) for t in texts]), "python"
