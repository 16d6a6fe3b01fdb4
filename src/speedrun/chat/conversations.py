"""Synthetic chat tasks for fine-tuning and evaluation, made offline from a seed.

    make_items(task, split, n, seed)    n conversations of one task, each ending in the reference answer
    mixture(weights, n, seed)           several tasks, shuffled together in proportion to their weights
    load_conversations(path)            the user's own conversations from a JSONL file

Every item has a key (the word, the sum, the question), and a stable hash of
the key puts it in one of three splits, whatever the seed: "test" (the first
TEST_FRACTION of the hash range: what the task evaluation asks), "val" (the next
VAL_FRACTION: fine-tuning's validation loss and its best checkpoint) and
"train" (the rest). No two splits share a key, so nothing evaluated is ever
trained on or chosen on. The word tasks share their keys: a held-out word is
never spelled, counted or reversed in training. Identity questions are split
by their underlying question instead, so every greeting, casing and
punctuation of a held-out question is held out with it. The assistant's
answers have one short, regular format per task (a small model must learn it);
only the user's phrasing varies.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..config import IDENTITY_CREATOR, IDENTITY_DESCRIPTION, IDENTITY_NAME
from ..data import jsonl_records
from .calculator import evaluate

TEST_FRACTION = 0.1
VAL_FRACTION = 0.05
SPLITS = ("train", "val", "test")
REDRAWS = 100  # tries at a new item for a test set before the pool counts as used up
DIGIT_WEIGHTS = {1: 1, 2: 2, 3: 4, 4: 2}  # operand lengths in training: 3 digits most often


class ChatDataError(ValueError):
    """A conversations file the user can fix."""


@dataclass
class TaskItem:
    task: str
    messages: list[dict]  # the whole conversation, ending with the assistant's reference answer
    answer: str  # what is_correct looks for: "619", "g a r d e n", "3", "speedrun"
    key: str = ""  # what decides the split: the word, the sum, the question
    wrong: tuple[str, ...] = ()  # answers a correct reply must not give (identity: the other kinds' answers)


def _hash_fraction(text: str) -> float:
    """A stable number in [0, 1) for `text` (hashlib, so the same in every process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2 ** 64


def split_of(key: str) -> str:
    """The split of a key: test, val or train, by where its hash falls."""
    u = _hash_fraction(key)
    return "test" if u < TEST_FRACTION else "val" if u < TEST_FRACTION + VAL_FRACTION else "train"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use 'train', 'val' or 'test'")
    return split


def _last_integer(text: str) -> str | None:
    numbers = re.findall(r"-?\d+", text)
    return numbers[-1] if numbers else None


def _letters(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def _spaced(word: str) -> str:
    """Letters apart, so a BPE tokenizer gives one token per letter."""
    return " ".join(word)


def _conversation(question: str, content) -> list[dict]:
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


# ---------------------------------------------------------------- arithmetic

class Arithmetic(Task):
    """The assistant calls the calculator, then states its result."""

    options = ("digits",)
    op: str
    phrasings: tuple[str, ...]

    def __init__(self, digits: int | None = None):
        if digits is not None and not (isinstance(digits, int) and 1 <= digits <= 18):
            raise ValueError(f"{self.name} digits must be a whole number from 1 to 18, not {digits!r}")
        self.digits = digits

    def operand(self, rng: random.Random) -> int:
        digits = self.digits or rng.choices(list(DIGIT_WEIGHTS), weights=list(DIGIT_WEIGHTS.values()))[0]
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)

    def key(self, a: int, b: int) -> str:
        return f"{a}{self.op}{b}"

    def sample(self, split: str, rng: random.Random, index: int = 0) -> TaskItem:
        _check_split(split)
        while True:
            a, b = self.operand(rng), self.operand(rng)
            if split_of(self.key(a, b)) == split:
                break
        call = f"{a}{self.op}{b}"
        result = evaluate(call)
        content = [{"type": "tool_call", "text": call}, {"type": "tool_output", "text": result},
                   {"type": "text", "text": f"The answer is {result}."}]
        question = rng.choice(self.phrasings).format(a=a, b=b)
        return TaskItem(self.name, _conversation(question, content), result, self.key(a, b))

    def is_correct(self, item: TaskItem, response: str) -> bool:
        return _last_integer(response) == item.answer


class Addition(Arithmetic):
    name, op = "addition", "+"
    phrasings = ("What is {a} plus {b}?", "Add {a} and {b}.", "How much is {a} + {b}?", "Calculate {a} plus {b}",
                 "what's {a}+{b}", "{a} + {b} = ?", "What is the sum of {a} and {b}?", "what is {a} + {b}",
                 "Can you add {a} and {b}?", "Compute {a}+{b}.")

    def key(self, a: int, b: int) -> str:
        # 137+482 is the same problem as 482+137: both sit on one side of the split.
        return f"{min(a, b)}+{max(a, b)}"


class Subtraction(Arithmetic):
    name, op = "subtraction", "-"
    phrasings = ("What is {a} minus {b}?", "Subtract {b} from {a}.", "How much is {a} - {b}?",
                 "Calculate {a} minus {b}", "what's {a}-{b}", "{a} - {b} = ?", "Take {b} away from {a}.",
                 "What is the difference {a} - {b}?", "what is {a} - {b}", "Compute {a}-{b}.")


# ---------------------------------------------------------------- words

@lru_cache(maxsize=1)
def words() -> list[str]:
    """Common English words of 3 to 10 letters, sorted: those in both GCIDE and
    Webster's 2nd that Webster's lists in lower case (so no names or places)."""
    try:
        from english_words import get_english_words_set
    except ImportError:
        raise ImportError("the word tasks need the english-words package; pip install english-words") from None
    both = get_english_words_set(["gcide"], lower=True) & get_english_words_set(["web2"])
    return sorted(w for w in both if 3 <= len(w) <= 10 and w.isascii() and w.isalpha() and w.islower())


@lru_cache(maxsize=3)
def split_words(split: str) -> list[str]:
    _check_split(split)
    return [w for w in words() if split_of(w) == split]


class WordTask(Task):
    phrasings: tuple[str, ...]

    def word(self, split: str, rng: random.Random) -> str:
        return rng.choice(split_words(split))


class Spelling(WordTask):
    name = "spelling"
    phrasings = ("Spell the word {w}.", "How do you spell '{w}'?", "spell {w}", "Can you spell {w} for me?",
                 "Spell out {w} letter by letter.", "How is {w} spelled?", "Spell \"{w}\".",
                 "What are the letters of {w}?")

    def sample(self, split: str, rng: random.Random, index: int = 0) -> TaskItem:
        word = self.word(split, rng)
        answer = _spaced(word)
        question = rng.choice(self.phrasings).format(w=word)
        return TaskItem(self.name, _conversation(question, answer), answer, word)

    def is_correct(self, item: TaskItem, response: str) -> bool:
        return _letters(response) == _letters(item.answer)


class Counting(WordTask):
    """The assistant spells the word with a running count at each match, so the
    count is carried along in the text instead of in the model's head."""

    name = "counting"
    # the answer is 0, 1, or 2 and more, in turn, so every set is a third of each: with
    # letters drawn from the word, "1" alone would be right more than half the time
    answer_kinds = ("absent", "once", "repeated")
    phrasings = ("How many times does the letter {c} appear in {w}?", "How many {c}'s are in '{w}'?",
                 "Count the letter {c} in {w}.", "How many times is {c} in {w}?",
                 "In the word {w}, how many times does {c} occur?", "how many {c} in {w}",
                 "Count how many times '{c}' appears in \"{w}\".")

    def letters(self, word: str, kind: str) -> list[str]:
        """The letters of a kind for this word: absent from it, in it once, or in it more often."""
        if kind == "absent":
            return [c for c in string.ascii_lowercase if c not in word]
        return sorted({c for c in word if (word.count(c) == 1) == (kind == "once")})

    def sample(self, split: str, rng: random.Random, index: int = 0) -> TaskItem:
        kind = self.answer_kinds[index % len(self.answer_kinds)]
        while not (choices := self.letters(word := self.word(split, rng), kind)):
            pass  # a word without a repeated letter: draw another
        letter = rng.choice(choices)
        spelled, count = [], 0
        for c in word:
            count += c == letter
            spelled.append(f"{c}:{count}" if c == letter else c)
        answer = str(count)
        text = f"{' '.join(spelled)}. The answer is {answer}."
        question = rng.choice(self.phrasings).format(c=letter, w=word)
        return TaskItem(self.name, _conversation(question, text), answer, word)

    def is_correct(self, item: TaskItem, response: str) -> bool:
        return _last_integer(response) == item.answer


class Reversing(WordTask):
    name = "reversing"
    phrasings = ("Reverse the word {w}.", "Spell {w} backwards.", "What is {w} reversed?", "Write {w} in reverse.",
                 "reverse {w}", "How do you spell '{w}' backwards?", "Spell \"{w}\" in reverse order.")

    def sample(self, split: str, rng: random.Random, index: int = 0) -> TaskItem:
        word = self.word(split, rng)
        answer = _spaced(word[::-1])
        text = f"{_spaced(word)} reversed is {answer}."
        question = rng.choice(self.phrasings).format(w=word)
        return TaskItem(self.name, _conversation(question, text), answer, word)

    def is_correct(self, item: TaskItem, response: str) -> bool:
        tail = re.split(r"\bis\b", response)[-1]
        return _letters(tail) == _letters(item.answer)


# ---------------------------------------------------------------- identity

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
        ranked = sorted(questions, key=lambda q: _hash_fraction(normalise(q)))
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
    _check_split(split)
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
        return TaskItem(self.name, _conversation(question, text), answer, question, wrong)

    def is_correct(self, item: TaskItem, response: str) -> bool:
        return stated(response, (item.answer, *item.wrong)) == {item.answer.lower()}


TASKS: dict[str, Task] = {t.name: t for t in (Addition(), Subtraction(), Spelling(), Counting(), Reversing(),
                                              Identity())}


# ---------------------------------------------------------------- sets of items

def get_task(task: str, **options) -> Task:
    """The registered task, or a new one with `options` (like digits=3) set."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; the tasks are {', '.join(TASKS)}")
    cls = type(TASKS[task])
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        raise ValueError(f"task {task} has no option {', '.join(unknown)}; "
                         f"its options: {', '.join(cls.options) or 'none'}")
    return cls(**options) if options else TASKS[task]


def make_items(task: str, split: str, n: int, seed: int, identity: dict | None = None,
               **options) -> list[TaskItem]:
    """n items of one task, the same for the same (task, split, seed). `options`
    configure the task (digits=3); `identity` holds the identity task's options
    (name, creator, description) and the other tasks ignore it, so one call can
    serve every task. A val or test set has no key twice while its pool lasts."""
    if task == "identity":
        options = {**(identity or {}), **options}
    t = get_task(task, **options)
    rng = random.Random(f"{task}/{split}/{seed}")
    if _check_split(split) == "train":
        return [t.sample(split, rng, i) for i in range(n)]
    items, seen = [], set()
    for i in range(n):
        for _ in range(REDRAWS):
            item = t.sample(split, rng, i)
            if item.key not in seen:
                break
        seen.add(item.key)
        items.append(item)
    return items


def mixture(weights: dict[str, float], n: int, seed: int, split: str = "train",
            identity: dict | None = None) -> list[TaskItem]:
    """n items of several tasks, shuffled: each task's count is n times its share
    of the weights (largest remainders take the items left over)."""
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"task weights must be non-negative and not all zero, got {weights}")
    total = sum(weights.values())
    exact = {task: n * w / total for task, w in weights.items()}
    counts = {task: int(x) for task, x in exact.items()}
    for task in sorted(exact, key=lambda t: counts[t] - exact[t])[:n - sum(counts.values())]:
        counts[task] += 1
    items = [item for task, count in counts.items() for item in make_items(task, split, count, seed, identity)]
    random.Random(f"mixture/{split}/{seed}").shuffle(items)
    return items


# ---------------------------------------------------------------- the user's conversations

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "tool_call", "tool_output")


def load_conversations(path) -> list[list[dict]]:
    """Conversations from JSONL: one {"messages": [...]} object, or a bare list of
    messages, per line. Every line is checked, so training never meets a bad one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ChatDataError(f"cannot read conversations from {path} ({e}); give a UTF-8 JSONL file") from None
    conversations = []
    for n, record in jsonl_records(text, path, '{"messages": [...]}', ChatDataError):
        problem = _conversation_problem(record)
        if problem:
            raise ChatDataError(f"{path} line {n}: {problem}")
        conversations.append(record["messages"] if isinstance(record, dict) else record)
    if not conversations:
        raise ChatDataError(f"{path} has no conversations; "
                            'write one per line like {"messages": [{"role": "user", "content": "Hi"}, ...]}')
    return conversations


def _conversation_problem(record) -> str | None:
    """What is wrong with one line's conversation, and how to fix it; None if nothing."""
    messages = record.get("messages") if isinstance(record, dict) else record
    if not isinstance(messages, list):
        return 'expected an object with a "messages" list, or a list of messages'
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return f'message {i} is not an object with "role" and "content"'
        role, content = message["role"], message["content"]
        if role not in ROLES:
            return f"message {i} has role {role!r}; use system, user or assistant"
        if role == "system" and i != 0:
            return f"message {i} is a system message; a system message may only come first"
        if isinstance(content, list) and role == "assistant":
            for part in content:
                if not (isinstance(part, dict) and part.get("type") in PART_TYPES
                        and isinstance(part.get("text"), str)):
                    return (f"message {i} has a bad part {part!r}; "
                            'a part is {"type": "text", "tool_call" or "tool_output", "text": "..."}')
        elif not isinstance(content, str):
            return (f"message {i} content is a {type(content).__name__}; use a string "
                    "(or, for the assistant, a list of parts)")
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message; a conversation needs at least one assistant reply to learn from"
    return None
