"""Tokenizers: characters of a fixed alphabet, or byte-level BPE.

Both share one interface: `encode`, `decode`, `vocab_size`, `eot` and `eot_id`
(the end-of-document token), `token_id(special)`, `token_bytes(id)` (the UTF-8
bytes of text a token stands for, for bits per byte), `to_json` / `from_json`.
Special tokens are vocabulary entries that user text cannot produce: a
document containing the string "<|endoftext|>" is encoded as those characters,
not as the end-of-document token, unless the caller passes `allow_special=True`.
"""

from __future__ import annotations

import json
import re

EOT = "<|endoftext|>"


class TokenizerError(ValueError):
    """Text the tokenizer cannot encode."""


class SpecialTokens:
    """Lookup of special tokens by name, shared by both tokenizers (`special_ids`)."""

    special_ids: dict[str, int]

    def token_id(self, special: str) -> int:
        if special not in self.special_ids:
            raise TokenizerError(f"{special!r} is not a special token of this tokenizer; "
                                 f"it has: {', '.join(self.special_ids) or 'none'}")
        return self.special_ids[special]


class CharTokenizer(SpecialTokens):
    """One token per character of `chars`, then one per special symbol that is
    not itself a character (such as "<|endoftext|>"). A special symbol that is a
    character of the alphabet, like addition's "\\n", is just that character."""

    kind = "char"

    def __init__(self, chars: str | list[str], eot: str | None = None, specials: list[str] = ()):
        self.chars = list(chars)
        if any(len(c) != 1 for c in self.chars):
            raise ValueError("character tokenizer alphabet entries must be single characters")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("character tokenizer alphabet has duplicates")
        if "" in specials or eot == "":
            raise ValueError("special tokens must be non-empty strings")
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.eot = eot
        self.specials = [s for s in dict.fromkeys(specials) if s != eot]
        named = [s for s in [eot, *self.specials] if s is not None]
        extra = [s for s in named if s not in self.stoi]
        self.vocab = self.chars + extra
        self.special_ids = {s: self.vocab.index(s) for s in named}
        self.eot_id = self.special_ids[eot] if eot is not None else None
        # Longest first, so a special that is a prefix of another does not win.
        self._special_re = re.compile("(" + "|".join(map(re.escape, sorted(extra, key=len, reverse=True)))
                                      + ")") if extra else None

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_bytes(self, i: int) -> int:
        """UTF-8 bytes of text token `i` stands for; 0 for a special symbol."""
        return len(self.vocab[i].encode()) if i < len(self.chars) else 0

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if allow_special and self._special_re is not None:
            ids = []
            for i, part in enumerate(self._special_re.split(text)):
                ids += [self.special_ids[part]] if i % 2 else self.encode(part)
            return ids
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            raise TokenizerError(
                f"text has characters outside this model's vocabulary: {''.join(unknown)!r}; "
                f"use only: {''.join(self.chars)!r}") from None

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "chars": self.chars, "eot": self.eot, "specials": self.specials})

    @classmethod
    def from_json(cls, text: str) -> "CharTokenizer":
        data = json.loads(text)
        return cls(data["chars"], eot=data.get("eot"), specials=data.get("specials", []))


class BPETokenizer(SpecialTokens):
    """Byte-level BPE (GPT-2 style) on Hugging Face `tokenizers`: every string
    encodes, since any byte is in the base alphabet, and decodes back exactly."""

    kind = "bpe"

    def __init__(self, tokenizer, eot: str = EOT):
        from tokenizers import Tokenizer

        self._tok = tokenizer
        # A second copy that reads special-token strings as plain text; the flag
        # is not part of the tokenizer's JSON, so it is set here on every load.
        self._plain = Tokenizer.from_str(tokenizer.to_str())
        self._plain.encode_special_tokens = True
        self.special_ids = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        self._special_id_set = set(self.special_ids.values())
        if eot not in self.special_ids:
            raise ValueError(f"the end-of-document token {eot!r} is not a special token of this BPE tokenizer")
        self.eot = eot
        self.eot_id = self.special_ids[eot]

    @classmethod
    def train(cls, texts, vocab_size: int, special_tokens: list[str] = (),
              progress: bool = False, split_digits: bool = False) -> "BPETokenizer":
        """With split_digits every digit is its own token, so numbers are read and
        copied digit by digit (arithmetic needs that more than it needs short numbers)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                             if split_digits else byte_level)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, show_progress=progress,
            special_tokens=list(dict.fromkeys([EOT, *special_tokens])),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_bytes(self, i: int) -> int:
        """UTF-8 bytes of text token `i` stands for; 0 for a special token."""
        # A byte-level token is spelled with one character per byte.
        return 0 if i in self._special_id_set else len(self._tok.id_to_token(i))

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        tok = self._tok if allow_special else self._plain
        return tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "eot": self.eot, "tokenizer": json.loads(self._tok.to_str())})

    @classmethod
    def from_json(cls, text: str) -> "BPETokenizer":
        from tokenizers import Tokenizer

        data = json.loads(text)
        return cls(Tokenizer.from_str(json.dumps(data["tokenizer"])), eot=data["eot"])


def load_tokenizer_file(path) -> "CharTokenizer | BPETokenizer":
    """A tokenizer saved as JSON (a run's tokenizer.json), with a one-line error if unusable."""
    from pathlib import Path

    try:
        return load_tokenizer(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer file {path} not found; give the tokenizer.json a run or "
                             "the chat pipeline wrote") from None
    except (ValueError, KeyError) as e:
        raise TokenizerError(f"{path} is not a speedrun tokenizer file ({e})") from None


def load_tokenizer(text: str):
    kind = json.loads(text).get("kind")
    if kind == "char":
        return CharTokenizer.from_json(text)
    if kind == "bpe":
        return BPETokenizer.from_json(text)
    raise ValueError(f"unknown tokenizer kind {kind!r} in checkpoint")
