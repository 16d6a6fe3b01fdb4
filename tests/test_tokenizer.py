import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speedrun.tokenizer import EOT, BPETokenizer, CharTokenizer, TokenizerError, load_tokenizer

ALPHABET = "abc <|>endoftx\n"
# Any text a file can hold: every code point except lone surrogates, which UTF-8 cannot encode.
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@pytest.fixture(scope="module")
def bpe():
    corpus = ["the cat sat on the mat. " * 20, "the dog ate the cat's dinner.\n" * 20, "héllo wörld 😀 " * 5]
    return BPETokenizer.train(corpus, vocab_size=320, special_tokens=["<|bos|>"])


def test_char_eot_that_is_a_character_keeps_the_addition_layout():
    tok = CharTokenizer("0123456789+=\n", eot="\n")
    assert tok.vocab_size == 13 and tok.eot_id == 12
    assert tok.encode("1+2=3\n")[-1] == tok.eot_id


def test_char_eot_symbol_is_an_extra_token_not_matched_in_text():
    tok = CharTokenizer(ALPHABET, eot=EOT)
    assert tok.vocab_size == len(ALPHABET) + 1 and tok.eot_id == len(ALPHABET)
    assert tok.token_id(EOT) == tok.eot_id
    ids = tok.encode("a" + EOT)
    assert tok.eot_id not in ids and len(ids) == 1 + len(EOT)
    assert tok.encode("a" + EOT + "b", allow_special=True) == [tok.stoi["a"], tok.eot_id, tok.stoi["b"]]
    assert tok.decode([tok.stoi["a"], tok.eot_id]) == "a" + EOT


def test_char_extra_specials_and_json_round_trip():
    tok = CharTokenizer(ALPHABET, eot=EOT, specials=["<|bos|>"])
    assert tok.vocab_size == len(ALPHABET) + 2
    assert tok.encode("<|bos|>a", allow_special=True) == [tok.token_id("<|bos|>"), tok.stoi["a"]]
    again = load_tokenizer(tok.to_json())
    assert isinstance(again, CharTokenizer) and again.to_json() == tok.to_json()
    assert again.vocab == tok.vocab and again.eot_id == tok.eot_id
    with pytest.raises(TokenizerError, match="<|pad|>"):
        tok.token_id("<|pad|>")


def test_char_unknown_characters_are_named():
    with pytest.raises(TokenizerError, match="'QZ'"):
        CharTokenizer(ALPHABET, eot=EOT).encode("aZbQ")


def test_char_rejects_bad_alphabets():
    with pytest.raises(ValueError, match="duplicates"):
        CharTokenizer("aab")
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["ab", "c"])


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=40))
def test_char_round_trip(text):
    tok = CharTokenizer(ALPHABET, eot=EOT)
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, allow_special=True)) == text


def test_bpe_trained_vocab_and_special_tokens(bpe):
    assert 256 + 2 < bpe.vocab_size <= 320
    assert bpe.eot == EOT and bpe.eot_id == bpe.token_id(EOT)
    assert bpe.token_id("<|bos|>") != bpe.eot_id
    with pytest.raises(TokenizerError, match="not a special token"):
        bpe.token_id("the")
    assert len(bpe.encode("the cat sat on the mat.")) < len("the cat sat on the mat.")  # merges were learned


def test_bpe_special_strings_in_user_text_are_plain_text_unless_allowed(bpe):
    text = "a" + EOT + "b<|bos|>"
    ids = bpe.encode(text)
    assert bpe.eot_id not in ids and bpe.token_id("<|bos|>") not in ids
    assert bpe.decode(ids) == text
    allowed = bpe.encode(text, allow_special=True)
    assert bpe.eot_id in allowed and bpe.token_id("<|bos|>") in allowed
    assert bpe.decode(allowed) == text
    assert bpe.decode([bpe.eot_id]) == EOT


def test_bpe_json_round_trip_is_stable(bpe):
    again = load_tokenizer(bpe.to_json())
    assert isinstance(again, BPETokenizer) and again.to_json() == bpe.to_json()
    text = "the cat " + EOT
    assert again.encode(text) == bpe.encode(text)
    assert again.encode(text, allow_special=True) == bpe.encode(text, allow_special=True)


@settings(max_examples=100, deadline=None)
@given(ANY_TEXT)
def test_bpe_round_trip_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_load_tokenizer_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        load_tokenizer('{"kind": "wordpiece"}')


def test_token_bytes_count_text_not_specials(bpe):
    tok = CharTokenizer("aé€😀", eot=EOT)
    assert [tok.token_bytes(i) for i in range(tok.vocab_size)] == [1, 2, 3, 4, 0]
    assert CharTokenizer("01\n", eot="\n").token_bytes(2) == 1  # a character eot is text
    text = "héllo wörld 😀 the cat"
    assert sum(bpe.token_bytes(i) for i in bpe.encode(text)) == len(text.encode())
    assert bpe.token_bytes(bpe.eot_id) == 0 and bpe.token_bytes(bpe.token_id("<|bos|>")) == 0
