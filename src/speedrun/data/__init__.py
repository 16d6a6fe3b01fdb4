"""The data layer for training on your own text, at any size: memory holds a batch, never the corpus.

    sources   documents streamed from files, folders, globs, JSONL, parquet, saved or hub datasets
    split     which split a document is in (a hash of its text) and which are copies
    encode    tokenizers fitted on a character budget, and the fastest encoder for one
    shards    the token shard file format, and a split's shards read as one array
    preparation  a source into shards with a manifest: found again by fingerprint, resumed if cut short

Every problem the user can fix raises `DataError` with a one-line message that
names the problem and the fix.
"""

from .encode import build_tokenizer, token_dtype
from .preparation import PreparedDataset, open_prepared, prepare
from .shards import TokenSplit
from .sources import DataError, cache_root, download, iter_documents, jsonl_records, load_documents
from .split import split_documents, unique_documents

__all__ = ["DataError", "PreparedDataset", "TokenSplit", "build_tokenizer", "cache_root", "download",
           "iter_documents", "jsonl_records", "load_documents", "open_prepared", "prepare", "split_documents",
           "token_dtype", "unique_documents"]
