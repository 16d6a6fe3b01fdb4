"""speedrun.data: splitting documents into train, validation and test, tokenizers, the token cache."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sources import error

from speedrun.data import build_tokenizer, split_documents, token_dtype, tokenize_cached, unique_documents
from speedrun.tokenizer import EOT, BPETokenizer, CharTokenizer


# ---------------------------------------------------------------- split

def held_out_count(fraction, n):
    count = round(fraction * n)
    return max(count, 1) if fraction > 0 and n > 1 else count


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(max_size=3), min_size=2, max_size=40), st.floats(0, 0.6), st.floats(0, 0.35),
       st.integers(0, 2**32 - 1))
def test_split_documents_disjoint_covering_and_deterministic(docs, val_fraction, test_fraction, seed):
    train, val, test = split_documents(docs, val_fraction, seed, test_fraction)
    unique = unique_documents(docs)
    # every distinct document lands in exactly one split, in its input order
    assert sorted(train + val + test) == sorted(unique) and len(set(train + val + test)) == len(unique)
    for side in (train, val, test):
        assert side == [d for d in unique if d in set(side)]
    n = len(unique)
    n_val = min(held_out_count(val_fraction, n), n - 1)
    assert len(val) == n_val and len(test) == max(0, min(held_out_count(test_fraction, n), n - 1 - n_val))
    assert len(train) >= 1
    assert split_documents(docs, val_fraction, seed, test_fraction) == (train, val, test)
    assert split_documents(docs, val_fraction, seed)[1] == val  # a test split leaves validation as it was


@settings(max_examples=80, deadline=None)
@given(st.text(min_size=1, max_size=200), st.floats(0, 0.6), st.floats(0, 0.35))
def test_split_single_document_is_contiguous_train_val_test(doc, val_fraction, test_fraction):
    train, val, test = split_documents([doc], val_fraction, 0, test_fraction)
    assert "".join(train + val + test) == doc and len(train) == 1 and train[0]
    for side, fraction in ((val, val_fraction), (test, test_fraction)):
        if side:
            assert abs(len(side[0]) - fraction * len(doc)) <= 1


def test_split_single_document_like_nanogpt():
    doc = "".join(chr(97 + i % 26) for i in range(1000))
    assert split_documents([doc], 0.1, seed=123) == ([doc[:900]], [doc[900:]], [])
    # the published recipes: nanoGPT's training text, its validation text halved into val and test
    assert split_documents([doc], 0.05, 123, 0.05) == ([doc[:900]], [doc[900:950]], [doc[950:]])


def test_split_depends_on_seed_and_rejects_bad_fractions():
    docs = [f"doc {i}" for i in range(100)]
    assert split_documents(docs, 0.1, 1)[1] != split_documents(docs, 0.1, 2)[1]
    assert split_documents(docs, 0.0, 1) == (docs, [], [])
    error("val_fraction", split_documents, docs, 1.0, 0)
    error("test_fraction", split_documents, docs, 0.1, 0, -0.1)
    error("leaves no training text", split_documents, docs, 0.5, 0, 0.5)
    error("no documents", split_documents, [], 0.1, 0)


def test_exact_duplicates_are_dropped_before_the_split():
    docs = [f"doc {i % 30}" for i in range(90)]  # every document three times
    assert unique_documents(docs) == [f"doc {i}" for i in range(30)]
    train, val, test = split_documents(docs, 0.2, 0, 0.2)
    assert len(train) == 18 and len(val) == 6 and len(test) == 6
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)


# ---------------------------------------------------------------- tokenizers and the token cache

def test_build_char_tokenizer_adds_an_eot_symbol():
    tok = build_tokenizer("char", ["hello", "world"])
    assert isinstance(tok, CharTokenizer)
    assert tok.chars == sorted(set("helloworld")) and tok.vocab_size == len(tok.chars) + 1
    assert tok.eot == EOT and tok.decode([tok.eot_id]) == EOT


def test_build_bpe_tokenizer():
    docs = ["some words, some more words. "] * 10
    tok = build_tokenizer("bpe", docs, vocab_size=300, special_tokens=["<|bos|>"])
    assert isinstance(tok, BPETokenizer) and tok.vocab_size <= 300
    assert tok.token_id("<|bos|>") != tok.eot_id
    error("too small for byte-level BPE", build_tokenizer, "bpe", ["x"], vocab_size=200)
    error("unknown tokenizer 'wordpiece'", build_tokenizer, "wordpiece", ["x"])


class FakeTokenizer:
    """Stands in for a tokenizer with a vocabulary too large for uint16."""

    vocab_size = 70_000
    eot_id = 69_999

    def encode(self, text):
        return [66_000 + ord(c) % 100 for c in text]

    def to_json(self):
        return '{"kind": "fake"}'


def test_token_dtype_rule(tmp_path):
    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    ids = tokenize_cached(["ab", "c"], FakeTokenizer(), str(tmp_path))
    assert ids.dtype == np.uint32 and ids.tolist() == [66_097, 66_098, 69_999, 66_099, 69_999]


def test_tokens_have_eot_after_every_document(tmp_path):
    docs = ["hello", "world!", "hi"]
    tok = build_tokenizer("char", docs)
    ids = tokenize_cached(docs, tok, str(tmp_path), name="train")
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16 and not ids.flags.writeable
    assert tok.decode(ids) == EOT.join(docs) + EOT
    assert (ids == tok.eot_id).sum() == len(docs)


def test_evaluation_tokens_start_with_an_end_of_document_token(tmp_path):
    docs = ["hello", "hi"]
    tok = build_tokenizer("char", docs)
    ids = tokenize_cached(docs, tok, str(tmp_path), name="val", lead_eot=True)
    assert tok.decode(ids) == EOT + EOT.join(docs) + EOT
    assert len(list((tmp_path / "tokens").iterdir())) == 1
    tokenize_cached(docs, tok, str(tmp_path), name="val")  # without it: another file
    assert len(list((tmp_path / "tokens").iterdir())) == 2


def test_bpe_tokens_with_special_strings_in_text(tmp_path):
    docs = ["a story " * 5, "text that mentions " + EOT + " literally"]
    tok = build_tokenizer("bpe", docs, vocab_size=280)
    ids = tokenize_cached(docs, tok, str(tmp_path))
    assert (ids == tok.eot_id).sum() == 2 and ids[-1] == tok.eot_id
    assert tok.decode(ids) == EOT.join(docs) + EOT


def test_token_cache_hit_and_misses(tmp_path, monkeypatch):
    docs = ["abc", "cab"]
    tok = build_tokenizer("char", docs)
    first = tokenize_cached(docs, tok, str(tmp_path), name="val")
    files = sorted((tmp_path / "tokens").iterdir())
    assert len(files) == 1 and files[0].name.startswith("val-")

    def boom(*args, **kwargs):
        raise AssertionError("encode called on a cache hit")

    monkeypatch.setattr(tok, "encode", boom)
    again = tokenize_cached(docs, tok, str(tmp_path), name="val")
    assert np.array_equal(first, again)
    monkeypatch.undo()

    tokenize_cached(["abc", "cba"], tok, str(tmp_path), name="val")  # content changed
    tokenize_cached(["ab", "cabc"], tok, str(tmp_path), name="val")  # same characters, new boundaries
    tokenize_cached(docs, build_tokenizer("char", docs + ["z"]), str(tmp_path), name="val")  # tokenizer changed
    assert len(list((tmp_path / "tokens").iterdir())) == 4


def test_tokenize_nothing_is_an_error(tmp_path):
    error("no documents", tokenize_cached, [], build_tokenizer("char", ["a"]), str(tmp_path))
