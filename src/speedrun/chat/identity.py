"""The identity task: who the model is, asked in many ways, answered per kind of question.

Identity questions are split by their underlying question, not by a hash of
each phrasing, so every greeting, casing and punctuation of a held-out question
is held out with it.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

from ..config import IDENTITY_CREATOR, IDENTITY_DESCRIPTION, IDENTITY_NAME
from .items import Task, TaskItem, check_split, conversation, hash_fraction

IDENTITY_GREETINGS = ("", "Hi! ", "Hello! ", "Hey! ", "Hi there! ", "Hello there. ", "Good morning! ", "Excuse me. ")
IDENTITY_QUESTIONS = {  # many underlying questions per kind, so a held-out one is learnable from the others
    "name": ("What is your name?", "What's your name?", "Who are you?", "What should I call you?",
             "Do you have a name?", "Tell me your name.", "What do people call you?", "What name do you go by?",
             "May I ask your name?", "What are you called?", "How should I address you?",
             "Can you tell me your name?", "What do I call you?", "Say your name."),
    "creator": ("Who made you?", "Who created you?", "Who built you?", "Who trained you?",
                "Who are your developers?", "Where do you come from?", "Who developed you?", "Who wrote you?",
                "Who is your creator?", "Who designed you?", "Who programmed you?", "Which team made you?",
                "Who is behind you?", "Who are your makers?"),
    "what": ("What are you?", "Tell me about yourself.", "Are you a human?", "What kind of model are you?",
             "Introduce yourself.", "Are you ChatGPT?", "Describe yourself.", "Are you a person?",
             "What sort of thing are you?", "Are you a robot?", "Are you an AI?", "What exactly are you?",
             "Are you a real person?", "Explain what you are."),
}
IDENTITY_HELD_OUT = {"test": 2, "val": 2}  # underlying questions per kind held out of training


def normalise(question: str) -> str:
    """A question with case and punctuation set aside: lower-case words, single spaces."""
    return " ".join(re.findall(r"[a-z0-9]+", question.lower()))


@lru_cache(maxsize=1)
def identity_base_splits() -> dict[str, str]:
    """The split of each underlying question: within each kind, the questions whose
    normalised text hashes lowest are test, the next val, the rest train, so every
    kind is asked in every split."""
    test, val = IDENTITY_HELD_OUT["test"], IDENTITY_HELD_OUT["test"] + IDENTITY_HELD_OUT["val"]
    splits = {}
    for questions in IDENTITY_QUESTIONS.values():
        ranked = sorted(questions, key=lambda q: hash_fraction(normalise(q)))
        splits.update({q: "test" if i < test else "val" if i < val else "train" for i, q in enumerate(ranked)})
    return splits


@lru_cache(maxsize=1)
def identity_variants() -> dict[str, tuple[str, str]]:
    """Every way a question is asked -> (kind, underlying question): each greeting,
    casing and final punctuation, so there are many paraphrases to learn from."""
    variants = {}
    for kind, questions in IDENTITY_QUESTIONS.items():
        for greeting in IDENTITY_GREETINGS:
            for question in questions:
                text = greeting + question
                for variant in (text, text.lower(), text[:-1], text.lower()[:-1]):
                    variants[variant] = (kind, question)
    return variants


@lru_cache(maxsize=3)
def identity_questions(split: str) -> list[tuple[str, str]]:
    """(kind, question) pairs of a split: all the variants of its underlying questions."""
    check_split(split)
    base = identity_base_splits()
    return sorted((kind, variant) for variant, (kind, question) in identity_variants().items()
                  if base[question] == split)


def stated(response: str, answers: tuple[str, ...]) -> set[str]:
    """Which of `answers` the response states (lower-cased), each as whole words. The
    longest are looked for first and taken out, so "the speedrun developers" does
    not also count as naming "speedrun"."""
    text, found = response.lower(), set()
    for answer in sorted({a.lower() for a in answers}, key=len, reverse=True):
        pattern = rf"(?<!\w){re.escape(answer)}(?!\w)"
        if re.search(pattern, text):
            found.add(answer)
            text = re.sub(pattern, " | ", text)
    return found


class Identity(Task):
    """Who the model is. Each kind of question has its own answer: the name for
    "who are you", the creator for "who made you", the description for "what are
    you". A reply is right when it states that answer and none of the other two,
    so one reply that names everything at once fails every question."""

    name = "identity"
    options = ("name", "creator", "description")

    def __init__(self, name: str = IDENTITY_NAME, creator: str = IDENTITY_CREATOR,
                 description: str = IDENTITY_DESCRIPTION):
        for option, value in (("name", name), ("creator", creator), ("description", description)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"identity {option} must be a non-empty string, not {value!r}")
        if len({name.lower(), creator.lower(), description.lower()}) < 3:
            raise ValueError("identity name, creator and description must differ, or a reply cannot show "
                             "which question it answers")
        self.answers = {"name": name, "creator": creator, "what": description}

    def split_of(self, key: str) -> str:
        return identity_base_splits()[identity_variants()[key][1]]

    def sample(self, split: str, rng: random.Random, index: int = 0) -> TaskItem:
        kind, question = rng.choice(identity_questions(split))
        answer = self.answers[kind]
        text = {"name": f"My name is {answer}.", "creator": f"I was made by {answer}.", "what": f"I am {answer}."}[kind]
        wrong = tuple(a for k, a in self.answers.items() if k != kind)
        return TaskItem(self.name, conversation(question, text), answer, question, wrong)

    def is_correct(self, item: TaskItem, response: str) -> bool:
        return stated(response, (item.answer, *item.wrong)) == {item.answer.lower()}
