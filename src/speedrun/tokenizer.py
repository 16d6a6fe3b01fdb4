"""Tokenizers. A character tokenizer maps each symbol of a fixed alphabet to an id."""

from __future__ import annotations

import json


class TokenizerError(ValueError):
    """Text the tokenizer cannot encode."""


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: str | list[str], eot: str | None = None):
        self.chars = list(chars)
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("character tokenizer alphabet has duplicates")
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.eot = eot  # end-of-text symbol, if the alphabet has one
        self.eot_id = self.stoi[eot] if eot is not None else None

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            raise TokenizerError(
                f"text has characters outside this model's vocabulary: {''.join(unknown)!r}; "
                f"use only: {''.join(self.chars)!r}") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "chars": self.chars, "eot": self.eot})

    @classmethod
    def from_json(cls, text: str) -> "CharTokenizer":
        data = json.loads(text)
        return cls(data["chars"], eot=data.get("eot"))


def load_tokenizer(text: str):
    kind = json.loads(text).get("kind")
    if kind == "char":
        return CharTokenizer.from_json(text)
    raise ValueError(f"unknown tokenizer kind {kind!r} in checkpoint")
