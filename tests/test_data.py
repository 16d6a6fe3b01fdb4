"""speedrun.data.split and speedrun.data.encode: which split a document is in, copies,
tokenizers fitted on a budget, and the encoders."""

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_data_sources import error

from speedrun.data import build_tokenizer, split_documents, token_dtype, unique_documents
from speedrun.data.encode import batch_encoder, within_budget
from speedrun.data.split import Digests, digest, split_of
from speedrun.tokenizer import EOT, BPETokenizer, CharTokenizer


# ---------------------------------------------------------------- split

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
    # each by its own text: the split of a document is split_of's
    for i, side in enumerate((train, val, test)):
        assert all(split_of(d, seed, val_fraction, test_fraction) == i for d in side)
    assert split_documents(docs, val_fraction, seed, test_fraction) == (train, val, test)
    assert split_documents(docs, val_fraction, seed)[1] == val  # a test split leaves validation as it was


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=30, unique=True), st.randoms())
def test_split_is_stable_under_reordering_and_growth(docs, rnd):
    train, val, test = split_documents(docs, 0.3, 7, 0.2)
    shuffled = docs[:]
    rnd.shuffle(shuffled)
    grown = shuffled + [d + "+" for d in docs]  # the corpus grows by new documents
    again = split_documents(grown, 0.3, 7, 0.2)
    for old, new in zip((train, val, test), again):
        assert set(old) <= set(new)


def test_split_fractions_are_met_on_many_documents():
    docs = [f"document number {i}" for i in range(20_000)]
    train, val, test = split_documents(docs, 0.1, 3, 0.05)
    assert abs(len(val) / len(docs) - 0.1) < 0.01 and abs(len(test) / len(docs) - 0.05) < 0.01


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
    assert len(train) + len(val) + len(test) == 30 and val and test
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


def test_digests_keep_every_document_seen_across_merges():
    seen = Digests()
    texts = [f"text {i}" for i in range(50_000)]  # past the first merge of the small set into the array
    assert all(seen.add(digest(t, 0)) for t in texts)
    assert len(seen) == 50_000 and len(seen.sorted) > 0
    assert not any(seen.add(digest(t, 0)) for t in random.Random(0).sample(texts, 2000))
    restored = Digests(seen.array())  # as a resumed preparation loads them
    assert not restored.add(digest("text 123", 0)) and restored.add(digest("text new", 0))


def test_token_dtype_rule():
    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32


def test_bpe_trains_on_a_character_budget():
    assert list(within_budget(["abcd", "efgh", "ijkl"], 6)) == ["abcd", "ef"]
    assert list(within_budget(["abcd", "efgh"], 0)) == ["abcd", "efgh"]
    docs = [f"word{i} " * 20 for i in range(200)]
    small = build_tokenizer("bpe", docs, vocab_size=400, max_chars=500)
    full = build_tokenizer("bpe", docs, vocab_size=400)
    assert small.vocab_size < full.vocab_size  # 500 characters hold fewer pairs to merge


def test_tiktoken_encodes_bpe_with_the_tokenizers_ids():
    rnd = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "don't", "it's", "42", "naïve", "café", "!?", "  ", "\n"]
    docs = ["".join(rnd.choice(words) + rnd.choice([" ", "", "\t", "\n\n"]) for _ in range(200)) for _ in range(60)]
    tok = build_tokenizer("bpe", docs[:30], vocab_size=420)
    encode, name = batch_encoder(tok, docs[:4])
    assert name == "tiktoken"
    texts = docs[30:] + ["mentions " + EOT + " as text"]
    assert encode(texts) == [tok.encode(t) for t in texts]


def test_encoders_fall_back_where_tiktoken_does_not_apply():
    from speedrun.chat.template import train_chat_tokenizer

    chat = train_chat_tokenizer(["12 + 34 = 46, said the cat"] * 20, 300)  # digits split one by one
    encode, name = batch_encoder(chat, ["1234 cats"])
    assert name == "tokenizers" and encode(["1234 cats"]) == [chat.encode("1234 cats")]
    char = build_tokenizer("char", ["abc"])
    encode, name = batch_encoder(char)
    assert name == "python" and encode(["cab"]) == [char.encode("cab")]
