"""Token shards: the one file format prepared token ids live in.

A shard is a 32-byte header, then the ids as flat little-endian uint16 or uint32:

    offset 0   8 bytes   magic b"SPDRTOK\\0"
    offset 8   uint32    format version (1)
    offset 12  uint32    bytes per id (2 or 4)
    offset 16  uint64    number of ids
    offset 24  uint64    documents in the shard

so a shard can be read with np.memmap(path, dtype, offset=32) by any tool (the
layout of modded-nanogpt's and llm.c's .bin shards, with a header of its own).
`ShardWriter` writes one atomically (a .part file renamed when whole);
`read_shard` opens one after checking its header and size; `TokenSplit` reads the
shards of one split as one array, windows across shard ends included.

A `Shard` reads its ids with `os.pread`, never through a memory map: the kernel maps
a whole large folio (hundreds of KB on ext4) into the process for each random window
a map is touched at, so 20 training steps on a 1 GB corpus put 0.6 GB of shard pages
in the process's resident memory. Read with pread, they stay in the page cache,
which the kernel can drop, and the process holds only the windows it asked for.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .sources import DataError

MAGIC = b"SPDRTOK\0"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")  # 32 bytes
assert HEADER.size == 32


def disk_full(path: Path, e: OSError) -> DataError:
    return DataError(f"no room left on the disk while writing {path} ({e.strerror}); free space or set "
                     f"data.cache_dir to a disk with room, then run again: the shards already written are kept "
                     f"and preparation resumes after the last whole one")


class ShardWriter:
    """Appends ids to `path`.part and renames it to `path` on `close`, with the header filled in."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self.part = self.path.with_name(self.path.name + ".part")
        self.tokens = self.documents = 0
        self.file = self.part.open("wb")
        self._write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, 0, 0))

    def _write(self, data) -> None:
        try:
            self.file.write(data)
        except OSError as e:
            self.file.close()
            self.part.unlink(missing_ok=True)
            raise disk_full(self.path, e) from None

    def write(self, ids: np.ndarray, documents: int = 0) -> None:
        self._write(np.ascontiguousarray(ids, dtype=self.dtype.newbyteorder("<")).tobytes())
        self.tokens += len(ids)
        self.documents += documents

    def close(self) -> dict:
        """Finish the shard; returns its manifest entry."""
        self.file.seek(0)
        self._write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self.tokens, self.documents))
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as e:
            raise disk_full(self.path, e) from None
        finally:
            self.file.close()
        os.replace(self.part, self.path)
        return {"file": self.path.name, "tokens": self.tokens, "documents": self.documents}

    def abandon(self) -> None:
        self.file.close()
        self.part.unlink(missing_ok=True)


def read_header(path: Path) -> tuple[int, int, int]:
    """(bytes per id, ids, documents) of a shard, after checking it is one and whole."""
    fix = f"delete the prepared folder {path.parent} and run again to prepare it anew"
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER.size)
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"prepared shard {path} is missing; {fix}") from None
    if len(raw) < HEADER.size:
        raise DataError(f"prepared shard {path} is truncated ({size} bytes, shorter than its header); {fix}")
    magic, version, itemsize, tokens, documents = HEADER.unpack(raw)
    if magic != MAGIC:
        raise DataError(f"{path} is not a speedrun token shard (its first bytes are {magic!r}); {fix}")
    if version != VERSION or itemsize not in (2, 4):
        raise DataError(f"{path} is a token shard of format version {version} with {itemsize}-byte ids, which "
                        f"this speedrun does not read (it reads version {VERSION}); {fix}")
    if size != HEADER.size + tokens * itemsize:
        raise DataError(f"prepared shard {path} is truncated or padded: {size} bytes where its header says "
                        f"{HEADER.size + tokens * itemsize}; {fix}")
    return itemsize, tokens, documents


class Shard:
    """The ids of a shard file, read by position: `len`, `dtype`, `shard[a:b]` and `np.asarray`."""

    def __init__(self, path: Path, dtype: np.dtype, count: int):
        self.path, self.dtype, self.count = Path(path), np.dtype(dtype).newbyteorder("<"), count
        self._fd, self._pid = None, None

    def __len__(self) -> int:
        return self.count

    def prefix(self, n: int) -> "Shard":
        """The first n ids, still on disk."""
        return Shard(self.path, self.dtype, min(n, self.count))

    def _read(self, start: int, stop: int) -> np.ndarray:
        if self._pid != os.getpid():  # opened lazily, once per process (a fork gets its own)
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        n = (stop - start) * self.dtype.itemsize
        data = os.pread(self._fd, n, HEADER.size + start * self.dtype.itemsize)
        if len(data) != n:
            raise DataError(f"prepared shard {self.path} changed while it was read ({len(data)} of {n} bytes at "
                            f"id {start}); delete the prepared folder {self.path.parent} and run again")
        return np.frombuffer(data, self.dtype)

    def __getitem__(self, index):
        if not isinstance(index, slice):
            raise TypeError("a Shard is read by slices: shard[a:b]")
        start, stop, step = index.indices(self.count)
        return self._read(start, max(start, stop))[::step]

    def __array__(self, dtype=None, copy=None):
        a = self._read(0, self.count)
        return a.astype(dtype) if dtype is not None else a

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)

    def __getstate__(self):
        return {"path": self.path, "dtype": self.dtype, "count": self.count, "_fd": None, "_pid": None}


def read_shard(path: Path, dtype: np.dtype, tokens: int | None = None) -> "Shard | np.ndarray":
    """The ids of a shard, checked against the header and the manifest's count."""
    path = Path(path)
    itemsize, count, _ = read_header(path)
    if itemsize != np.dtype(dtype).itemsize or (tokens is not None and count != tokens):
        raise DataError(f"prepared shard {path} does not match its manifest ({count} ids of {itemsize} bytes, "
                        f"where the manifest says {tokens} of {np.dtype(dtype).itemsize}); delete the prepared "
                        f"folder {path.parent} and run again to prepare it anew")
    if count == 0:
        return np.zeros(0, dtype)
    return Shard(path, dtype, count)


class TokenSplit:
    """The shards of one split read as one array of ids: `len`, indexing and slicing
    like a numpy array, and `rows` for a batch of windows (a window may span shards)."""

    def __init__(self, shards: list[np.ndarray]):
        self.shards = [s for s in shards if len(s)]
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.dtype = self.shards[0].dtype if self.shards else np.dtype(np.uint16)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def head(self, n: int) -> "TokenSplit":
        """The first n ids (all when n is 0 or more than there are)."""
        if not n or n >= len(self):
            return self
        k = int(np.searchsorted(self.starts, n, side="left"))
        last, keep = self.shards[k - 1], n - int(self.starts[k - 1])
        return TokenSplit([*self.shards[:k - 1], last.prefix(keep) if isinstance(last, Shard) else last[:keep]])

    def rows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """ids[s : s + length] for each s in starts, as an int64 array (len(starts), length)."""
        starts = np.asarray(starts, dtype=np.int64)
        out = np.empty((len(starts), length), np.int64)
        for i, s in enumerate(starts):
            out[i] = self.slice(int(s), int(s) + length)
        return out

    def slice(self, start: int, stop: int) -> np.ndarray:
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        while start < stop:
            offset = start - int(self.starts[k])
            take = min(stop - start, len(self.shards[k]) - offset)
            parts.append(self.shards[k][offset:offset + take])
            start += take
            k += 1
        return np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0]) if parts else np.zeros(0, self.dtype)

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            return self.slice(start, max(start, stop))[::step]
        if isinstance(index, (int, np.integer)):
            i = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(index)
            return self.slice(i, i + 1)[0]
        raise TypeError(f"TokenSplit indices are ints or slices, not {type(index).__name__}")

    def __iter__(self):
        for shard in self.shards:
            for i in range(0, len(shard), 1 << 20):
                yield from shard[i:i + (1 << 20)]

    def __array__(self, dtype=None, copy=None):
        a = self.slice(0, len(self))
        return a.astype(dtype) if dtype is not None else a
