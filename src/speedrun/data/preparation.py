"""Preparation: a source streamed once into token shards, with a manifest, in bounded memory.

    prepare(data_cfg)          the prepared dataset for a [data] table: found, resumed or made
    open_prepared(folder)      a prepared folder (what `speedrun prepare` writes), checked
    PreparedDataset            its tokenizer, manifest and one TokenSplit per split

A prepared folder holds `tokenizer.json`, the shards (`train-00000.bin`, ...) and
`manifest.json`, written last, when every shard is whole: a folder without one is a
preparation in progress. Its name carries a key of the source's cheap fingerprint
(sizes, mtimes, sampled bytes: never the whole corpus) and of every setting that
changes the tokens, so the next run on the same data finds it at once.

The corpus is read once for the tokenizer (BPE: the first `data.tokenizer_chars`
characters of the training documents; characters: every document, for the
alphabet) and once to encode. Documents go to train, val or test by a hash of their
text (`split.split_of`); copies are dropped by digest. They are encoded a batch of
~`BATCH_CHARS` at a time, in parallel (tiktoken or tokenizers use every core), and
appended to each split's open shard, each document followed by an end-of-document
token, and each held-out split starting with one, as context for its first token.
When the training shard reaches `data.shard_tokens`, every open shard is closed and
the position is saved (`progress.json` and the digests seen), so a preparation
that is killed resumes after its last whole shards and writes the same bytes.

A corpus of one document (Tiny Shakespeare) is cut contiguously instead
(`split.cut_document`), as nanoGPT cuts it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..tokenizer import load_tokenizer, load_tokenizer_file
from .encode import batch_encoder, build_tokenizer, token_dtype
from .shards import ShardWriter, TokenSplit, disk_full, read_shard
from .sources import DataError, cache_root, download, download_path, fingerprint, iter_documents, no_text, source_bytes
from .split import SPLITS, TRAIN, VAL, Digests, check_fractions, cut_document, digest, split_of_digest

FORMAT = "speedrun-prepared-1"
BATCH_CHARS = 1 << 22  # characters encoded at a time: ~4 MB of text, a few hundred MB of ids at most
PARITY_SAMPLE = 64  # training documents on which a faster encoder must give the tokenizer's own ids


@dataclass
class PreparedDataset:
    folder: Path
    manifest: dict
    tokenizer: object
    splits: dict  # name -> TokenSplit

    def split(self, name: str) -> TokenSplit | None:
        return self.splits.get(name)

    @property
    def key(self) -> str:
        return self.manifest["key"]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_text(path: Path, text: str) -> None:
    """Atomically: a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise disk_full(path, e) from None


def _write_json(path: Path, value) -> None:
    _write_text(path, json.dumps(value, indent=1) + "\n")


def _resolve_source(cfg) -> str:
    source = cfg.source or (str(download(cfg.url, cfg.cache_dir)) if cfg.url else "")
    if not source:
        raise DataError("no training text: pass --data PATH (a file, folder, glob, .jsonl, .parquet or hf:NAME)")
    return source


def release_freed_memory() -> None:
    """Hand the memory the C heap holds free back to the system. Training a BPE on 100M
    characters leaves ~300 MB of freed but fragmented heap that glibc keeps for reuse, and
    the training that follows in the same process would count it in its peak; elsewhere
    (no glibc) it does nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def is_prepared(source: str) -> bool:
    return not source.startswith("hf:") and (Path(source).expanduser() / "manifest.json").is_file()


def settings(cfg) -> dict:
    """Every [data] setting that changes the prepared tokens."""
    return {"text_field": cfg.text_field, "doc_per_line": cfg.doc_per_line, "hf_split": cfg.hf_split,
            "val_fraction": 0.0 if cfg.val_source else cfg.val_fraction, "test_fraction": cfg.test_fraction,
            "split_seed": cfg.split_seed, "tokenizer": cfg.tokenizer, "vocab_size": cfg.vocab_size,
            "tokenizer_chars": cfg.tokenizer_chars, "shard_tokens": cfg.shard_tokens}


def dataset_key(cfg, source: str, tokenizer=None) -> tuple[str, dict]:
    """(key, what it digests): the source's and validation source's fingerprints, the settings,
    and the tokenizer when one is given rather than fitted."""
    given = tokenizer.to_json() if tokenizer is not None else (
        load_tokenizer_file(cfg.tokenizer_file).to_json() if cfg.tokenizer_file else None)
    identity = {"format": FORMAT, "source": fingerprint(source, cfg.hf_split),
                "val_source": fingerprint(cfg.val_source, cfg.hf_split) if cfg.val_source else None,
                "settings": settings(cfg), "tokenizer": _sha(given) if given else "fitted"}
    return _sha(json.dumps(identity, sort_keys=True))[:20], identity


def prepare(cfg, tokenizer=None, progress: bool | None = None, out: str = "") -> PreparedDataset:
    """The prepared dataset of a [data] table (TextData): the folder `out` or the one in the
    cache, opened when whole, resumed when a preparation was cut short, else made."""
    source = _resolve_source(cfg)
    if tokenizer is None and cfg.tokenizer_file:
        tokenizer = load_tokenizer_file(cfg.tokenizer_file)
    if is_prepared(source):
        return open_prepared(Path(source).expanduser(), tokenizer, cfg)
    check_fractions(cfg.val_fraction, cfg.test_fraction)
    key, identity = dataset_key(cfg, source, tokenizer)
    folder = Path(out).expanduser() if out else _cached_folder(cfg, source, key)
    if (folder / "manifest.json").is_file():
        return open_prepared(folder, tokenizer)
    progress = sys.stderr.isatty() if progress is None else progress
    Preparation(cfg, source, folder, key, identity, tokenizer, progress).run()
    release_freed_memory()
    return open_prepared(folder, tokenizer)


def _cached_folder(cfg, source: str, key: str) -> Path:
    path = Path(source.rstrip("/"))
    name = f"{path.parent.name}-{path.name}" if any(c in path.name for c in "*?[") else path.name  # a glob
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:40] or "data"
    return cache_root(cfg.cache_dir) / "prepared" / f"{stem}-{key}"


def prepared_manifest(cfg) -> dict | None:
    """The manifest of the [data] table's dataset when it is already prepared (a folder given
    as the source, or one in the cache), else None: nothing is read beyond the source's cheap
    fingerprint, nothing downloaded, nothing prepared. What `speedrun plan` sizes a run from."""
    try:
        if cfg.source:
            source = cfg.source
        elif cfg.url:
            source = str(download_path(cfg.url, cfg.cache_dir))
            if not Path(source).is_file():
                return None
        else:
            return None
        folder = (Path(source).expanduser() if is_prepared(source)
                  else _cached_folder(cfg, source, dataset_key(cfg, source)[0]))
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError, DataError):
        return None


def open_prepared(folder: Path, tokenizer=None, cfg=None) -> PreparedDataset:
    """A whole prepared folder, each shard checked against the manifest; a tokenizer given
    (data.tokenizer_file) must be the one the folder was prepared with."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        tok_json = (folder / "tokenizer.json").read_text()
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{folder} is not a whole prepared dataset ({e}); delete it and run again") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{folder} was prepared in format {manifest.get('format')!r}, not {FORMAT!r}; "
                        f"prepare it again with this speedrun (speedrun prepare SOURCE)")
    if _sha(tok_json) != manifest["tokenizer_sha256"]:
        raise DataError(f"{folder}/tokenizer.json is not the tokenizer its manifest was prepared with; "
                        f"delete {folder} and prepare it again")
    if tokenizer is not None and _sha(tokenizer.to_json()) != manifest["tokenizer_sha256"]:
        raise DataError(f"{folder} was prepared with another tokenizer than data.tokenizer_file; drop "
                        f"data.tokenizer_file to use the prepared one, or prepare the source again with it")
    if cfg is not None and cfg.val_source:
        raise DataError(f"{folder} is a prepared dataset with its own validation split; "
                        f"drop data.val_source, or prepare the sources again together")
    tok = load_tokenizer(tok_json)
    dtype = np.dtype(manifest["dtype"])
    splits = {name: TokenSplit([read_shard(folder / s["file"], dtype, s["tokens"]) for s in info["shards"]])
              for name, info in manifest["splits"].items() if info["tokens"]}
    return PreparedDataset(folder, manifest, tok, splits)


class Preparation:
    """One preparation of a source into `folder`, resumable from its last whole shards."""

    def __init__(self, cfg, source: str, folder: Path, key: str, identity: dict, tokenizer, progress: bool):
        self.cfg, self.source, self.folder, self.key, self.identity = cfg, source, folder, key, identity
        self.tokenizer, self.progress = tokenizer, progress

    # --- the documents, in the one order every pass reads them -------------
    def documents(self) -> Iterator[tuple[str, int | None]]:
        """(text, forced split): the source's documents, then data.val_source's, all validation."""
        c = self.cfg
        main = ((d, None) for d in iter_documents(self.source, c.text_field, c.doc_per_line, c.hf_split))
        if not c.val_source:
            return main
        return itertools.chain(main, ((d, VAL) for d in iter_documents(c.val_source, c.text_field,
                                                                          c.doc_per_line, c.hf_split)))

    def single_document(self) -> str | None:
        """The text when the source is one document (cut contiguously), else None."""
        if self.cfg.val_source:
            return None
        first_two = list(itertools.islice(self.documents(), 2))
        if not first_two:
            raise no_text(self.source)
        return first_two[0][0] if len(first_two) == 1 else None

    def run(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state_path = self.folder / "progress.json"
        state = json.loads(state_path.read_text()) if state_path.is_file() else None
        if state is not None and state.get("key") != self.key:
            state = None  # a folder given with --out that held another preparation
        single = self.single_document()
        tok = self.fitted_tokenizer(single, resumed=state is not None)
        release_freed_memory()
        tok_json = tok.to_json()
        dtype = token_dtype(tok.vocab_size)
        if single is not None:
            parts = cut_document(single, self.cfg.val_fraction, self.cfg.test_fraction)
            splits = {}
            for i, (name, text) in enumerate(zip(SPLITS, parts)):
                splits[name] = {"shards": [], "documents": 0, "tokens": 0, "bytes": len(text.encode())}
                if text:
                    writer = ShardWriter(self.folder / f"{name}-00000.bin", dtype)
                    writer.write(np.asarray(([] if i == TRAIN else [tok.eot_id]) + tok.encode(text) + [tok.eot_id]),
                                 documents=1)
                    entry = writer.close()
                    splits[name].update(shards=[entry], documents=1, tokens=entry["tokens"])
            self.finish(tok_json, dtype, splits, {"documents_read": 1, "duplicates_dropped": 0, "encoder": "python"})
        else:
            self.stream(tok, tok_json, dtype, state)

    def fitted_tokenizer(self, single: str | None, resumed: bool):
        path = self.folder / "tokenizer.json"
        if resumed and path.is_file():
            return load_tokenizer(path.read_text())
        if self.tokenizer is not None:
            tok = self.tokenizer
        else:
            c = self.cfg
            if single is not None:
                train, val, test = cut_document(single, c.val_fraction, c.test_fraction)
                # a character vocabulary covers the held-out text too (it learns the alphabet,
                # nothing of the text's statistics); BPE learns from the training text only
                texts = [single] if c.tokenizer == "char" else [train]
            elif c.tokenizer == "char":
                texts = self.bar_over(d for d, _ in self.documents())
            else:
                texts = (d for d, forced in self.documents() if forced is None and self.split_of(digest(d, c.split_seed)) == TRAIN)
            tok = build_tokenizer(c.tokenizer, texts, c.vocab_size, max_chars=c.tokenizer_chars,
                                  progress=self.progress)
        _write_text(path, tok.to_json())
        return tok

    def bar_over(self, docs):
        from tqdm import tqdm

        bar = tqdm(desc="reading the alphabet", unit="doc", disable=not self.progress, mininterval=1)
        for d in docs:
            bar.update()
            yield d
        bar.close()

    def split_of(self, d: bytes) -> int:
        """The split of a document by its digest (data.val_source: no validation from the source)."""
        c = self.cfg
        return split_of_digest(d, 0.0 if c.val_source else c.val_fraction, c.test_fraction)

    # --- the streaming pass ---------------------------------------------
    def stream(self, tok, tok_json: str, dtype: np.dtype, state: dict | None) -> None:
        from tqdm import tqdm

        c = self.cfg
        sample = list(itertools.islice((d for d, f in self.documents() if f is None), PARITY_SAMPLE))
        encode, encoder = batch_encoder(tok, sample)
        if state is None:
            state = {"key": self.key, "documents_read": 0, "duplicates_dropped": 0,
                     "splits": {name: {"shards": [], "documents": 0, "tokens": 0, "bytes": 0} for name in SPLITS}}
            seen = Digests()
        else:
            seen = Digests(np.load(self.folder / "digests.npy"))
        self.remove_strays(state)
        total = sum(filter(None, [source_bytes(self.source), source_bytes(c.val_source) if c.val_source else 0]))
        bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=f"preparing {self.folder.name}",
                   disable=not self.progress, mininterval=1, smoothing=0.1)
        bar.update(state.get("bytes_read", 0))
        writers: dict[int, ShardWriter] = {}
        docs = itertools.islice(self.documents(), state["documents_read"], None)
        started = time.perf_counter()
        try:
            while batch := self.next_batch(docs, min(BATCH_CHARS, c.shard_tokens)):
                by_split: tuple[list[str], list[str], list[str]] = ([], [], [])
                for text, forced in batch:
                    d = digest(text, c.split_seed)
                    if not seen.add(d):
                        state["duplicates_dropped"] += 1
                        continue
                    by_split[forced if forced is not None else self.split_of(d)].append(text)
                state["documents_read"] += len(batch)
                batch_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for t, _ in batch)
                state["bytes_read"] = state.get("bytes_read", 0) + batch_bytes
                for i, texts in enumerate(by_split):
                    if texts:
                        self.append(writers, state, i, texts, encode(texts), tok.eot_id, dtype)
                bar.update(batch_bytes)
                bar.set_postfix_str(f"{state['documents_read']:,} docs", refresh=False)
                if TRAIN in writers and writers[TRAIN].tokens >= c.shard_tokens:
                    self.checkpoint(writers, state, seen)
        except DataError:  # a full disk: keep the whole shards and progress.json, free the rest
            for writer in writers.values():
                writer.abandon()
            raise
        bar.close()
        for i in list(writers):
            self.close_shard(writers, state, i)
        state["encode_seconds"] = time.perf_counter() - started
        splits = state["splits"]
        distinct = sum(info["documents"] for info in splits.values())
        if not distinct:
            raise no_text(self.source)
        if not splits["train"]["tokens"]:
            raise DataError(f"none of the {distinct:,} distinct documents of {self.source} fell in training "
                            f"(data.val_fraction {c.val_fraction}, data.test_fraction {c.test_fraction}); "
                            f"give more documents or lower the fractions")
        if not splits["val"]["tokens"] and not c.val_source and c.val_fraction > 0:
            raise DataError(f"none of the {distinct:,} distinct documents of {self.source} "
                            f"fell in validation at data.val_fraction = {c.val_fraction}; raise it, give more "
                            f"documents, or give data.val_source")
        self.finish(tok_json, dtype, splits, {"documents_read": state["documents_read"],
                                              "duplicates_dropped": state["duplicates_dropped"],
                                              "encoder": encoder, "encode_seconds": state["encode_seconds"]})

    @staticmethod
    def next_batch(docs: Iterator, limit: int) -> list:
        """Documents until `limit` characters (at least one): a batch depends only on where
        it starts, so a resumed preparation cuts the same batches. Shards close between
        batches, so the limit is never more than a shard's worth."""
        batch, chars = [], 0
        for item in docs:
            batch.append(item)
            chars += len(item[0])
            if chars >= limit:
                break
        return batch

    def append(self, writers: dict, state: dict, i: int, texts: list[str], ids: list[list[int]],
               eot: int, dtype: np.dtype) -> None:
        info = state["splits"][SPLITS[i]]
        if i not in writers:
            writers[i] = ShardWriter(self.folder / f"{SPLITS[i]}-{len(info['shards']):05d}.bin", dtype)
            if i != TRAIN and not info["shards"]:
                writers[i].write(np.asarray([eot]))  # context for the split's first token
        flat = np.fromiter(itertools.chain.from_iterable(row + [eot] for row in ids), dtype,
                           count=sum(map(len, ids)) + len(ids))
        writers[i].write(flat, documents=len(texts))
        info["bytes"] += sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)

    def close_shard(self, writers: dict, state: dict, i: int) -> None:
        entry = writers.pop(i).close()
        info = state["splits"][SPLITS[i]]
        info["shards"].append(entry)
        info["documents"] += entry["documents"]
        info["tokens"] += entry["tokens"]

    def checkpoint(self, writers: dict, state: dict, seen: Digests) -> None:
        """Close every open shard and save the position: a resumed preparation starts here."""
        for i in list(writers):
            self.close_shard(writers, state, i)
        tmp = self.folder / "digests.tmp.npy"
        try:
            np.save(tmp, seen.array())
            os.replace(tmp, self.folder / "digests.npy")
        except OSError as e:
            raise disk_full(self.folder / "digests.npy", e) from None
        _write_json(self.folder / "progress.json", state)

    def remove_strays(self, state: dict) -> None:
        """Shards not in the saved position (a preparation cut short wrote them after it)."""
        kept = {s["file"] for info in state["splits"].values() for s in info["shards"]}
        for p in self.folder.iterdir():
            if (p.suffix == ".bin" and p.name not in kept) or p.name.endswith(".part"):
                p.unlink()

    def finish(self, tok_json: str, dtype: np.dtype, splits: dict, counts: dict) -> None:
        manifest = {"format": FORMAT, "key": self.key, "source": self.source, **self.identity,
                    "tokenizer_sha256": _sha(tok_json), "vocab_size": load_tokenizer(tok_json).vocab_size,
                    "dtype": dtype.name, **counts, "splits": splits}
        _write_json(self.folder / "manifest.json", manifest)
        for name in ("progress.json", "digests.npy"):
            (self.folder / name).unlink(missing_ok=True)


def describe(ds: PreparedDataset) -> str:
    m = ds.manifest
    parts = ", ".join(f"{name} {info['tokens']:,} tokens in {len(info['shards'])} shard"
                      f"{'s' if len(info['shards']) != 1 else ''}" for name, info in m["splits"].items()
                      if info["tokens"])
    return (f"prepared {ds.folder}: {m['documents_read']:,} documents read, {m['duplicates_dropped']:,} "
            f"duplicates dropped; {parts}")
