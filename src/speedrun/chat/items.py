"""What every synthetic chat task is made of: an item, the task interface, and the split of a key.

Every item has a key (the word, the sum, the question), and a stable hash of
the key puts it in one of three splits, whatever the seed: "test" (the first
TEST_FRACTION of the hash range: what the task evaluation asks), "val" (the next
VAL_FRACTION: fine-tuning's validation loss and its best checkpoint) and
"train" (the rest). No two splits share a key, so nothing evaluated is ever
trained on or chosen on.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

TEST_FRACTION = 0.1
VAL_FRACTION = 0.05
SPLITS = ("train", "val", "test")


@dataclass
class TaskItem:
    task: str
    messages: list[dict]  # the whole conversation, ending with the assistant's reference answer
    answer: str  # what is_correct looks for: "619", "g a r d e n", "3", "speedrun"
    key: str = ""  # what decides the split: the word, the sum, the question
    wrong: tuple[str, ...] = ()  # answers a correct reply must not give (identity: the other kinds' answers)


def hash_fraction(text: str) -> float:
    """A stable number in [0, 1) for `text` (hashlib, so the same in every process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2 ** 64


def split_of(key: str) -> str:
    """The split of a key: test, val or train, by where its hash falls."""
    u = hash_fraction(key)
    return "test" if u < TEST_FRACTION else "val" if u < TEST_FRACTION + VAL_FRACTION else "train"


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use 'train', 'val' or 'test'")
    return split


def last_integer(text: str) -> str | None:
    numbers = re.findall(r"-?\d+", text)
    return numbers[-1] if numbers else None


def letters_only(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def spaced(word: str) -> str:
    """Letters apart, so a BPE tokenizer gives one token per letter."""
    return " ".join(word)


def conversation(question: str, content) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": content}]


class Task:
    name: str
    options: tuple[str, ...] = ()  # keyword arguments of the constructor, passed through make_items

    def sample(self, split: str, rng: random.Random, index: int = 0) -> TaskItem:
        """One item of `split`; `index` is its place in the set being made, which a task
        whose answers would be unbalanced uses to take its kinds of item in turn."""
        raise NotImplementedError

    def split_of(self, key: str) -> str:
        return split_of(key)

    def is_correct(self, item: TaskItem, response: str) -> bool:
        """Whether `response` (the assistant's text parts, joined) gives the item's answer."""
        raise NotImplementedError
