"""Synthetic chat tasks for fine-tuning and evaluation, made offline from a seed.

    make_items(task, split, n, seed)    n conversations of one task, each ending in the reference answer
    mixture(weights, n, seed)           several tasks, shuffled together in proportion to their weights

The tasks: addition and subtraction (with the calculator), spelling, counting
and reversing words, and identity (chat/identity.py). Each item's key decides
its split (chat/items.py), so nothing evaluated is ever trained on or chosen
on. The word tasks share their keys: a held-out word is never spelled, counted
or reversed in training. The assistant's answers have one short, regular format
per task (a small model must learn it); only the user's phrasing varies. The
user's own conversations are read by chat/user_conversations.py.
"""

from __future__ import annotations

import random
import re
import string
from functools import lru_cache

from .calculator import evaluate
from .identity import Identity
from .items import Task, TaskItem, check_split, conversation, last_integer, letters_only, spaced, split_of

REDRAWS = 100  # tries at a new item for a test set before the pool counts as used up
DIGIT_WEIGHTS = {1: 1, 2: 2, 3: 4, 4: 2}  # operand lengths in training: 3 digits most often


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
        check_split(split)
        while True:
            a, b = self.operand(rng), self.operand(rng)
            if split_of(self.key(a, b)) == split:
                break
        call = f"{a}{self.op}{b}"
        result = evaluate(call)
        content = [{"type": "tool_call", "text": call}, {"type": "tool_output", "text": result},
                   {"type": "text", "text": f"The answer is {result}."}]
        question = rng.choice(self.phrasings).format(a=a, b=b)
        return TaskItem(self.name, conversation(question, content), result, self.key(a, b))

    def is_correct(self, item: TaskItem, response: str) -> bool:
        return last_integer(response) == item.answer


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
    check_split(split)
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
        answer = spaced(word)
        question = rng.choice(self.phrasings).format(w=word)
        return TaskItem(self.name, conversation(question, answer), answer, word)

    def is_correct(self, item: TaskItem, response: str) -> bool:
        return letters_only(response) == letters_only(item.answer)


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

    def letters_of_kind(self, word: str, kind: str) -> list[str]:
        """The letters of a kind for this word: absent from it, in it once, or in it more often."""
        if kind == "absent":
            return [c for c in string.ascii_lowercase if c not in word]
        return sorted({c for c in word if (word.count(c) == 1) == (kind == "once")})

    def sample(self, split: str, rng: random.Random, index: int = 0) -> TaskItem:
        kind = self.answer_kinds[index % len(self.answer_kinds)]
        while not (choices := self.letters_of_kind(word := self.word(split, rng), kind)):
            pass  # a word without a repeated letter: draw another
        letter = rng.choice(choices)
        spelled, count = [], 0
        for c in word:
            count += c == letter
            spelled.append(f"{c}:{count}" if c == letter else c)
        answer = str(count)
        text = f"{' '.join(spelled)}. The answer is {answer}."
        question = rng.choice(self.phrasings).format(c=letter, w=word)
        return TaskItem(self.name, conversation(question, text), answer, word)

    def is_correct(self, item: TaskItem, response: str) -> bool:
        return last_integer(response) == item.answer


class Reversing(WordTask):
    name = "reversing"
    phrasings = ("Reverse the word {w}.", "Spell {w} backwards.", "What is {w} reversed?", "Write {w} in reverse.",
                 "reverse {w}", "How do you spell '{w}' backwards?", "Spell \"{w}\" in reverse order.")

    def sample(self, split: str, rng: random.Random, index: int = 0) -> TaskItem:
        word = self.word(split, rng)
        answer = spaced(word[::-1])
        text = f"{spaced(word)} reversed is {answer}."
        question = rng.choice(self.phrasings).format(w=word)
        return TaskItem(self.name, conversation(question, text), answer, word)

    def is_correct(self, item: TaskItem, response: str) -> bool:
        tail = re.split(r"\bis\b", response)[-1]
        return letters_only(tail) == letters_only(item.answer)


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
    if check_split(split) == "train":
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

