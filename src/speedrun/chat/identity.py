"""The identity task: who the model is, asked in many ways, answered per kind of question.

Identity questions are split by their underlying question, not by a hash of
each phrasing, so every greeting, casing and punctuation of a held-out question
is held out with it. Each split holds 12 questions of each kind, 36 in all, so
one question the model gets wrong costs about 3 points of a 100-item score;
and no question's words contain another's, so a held-out question is never a
trained one with a word added.
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
             "Do you have a name?", "Tell me your name.", "What do people call you?",
             "What name do you go by?", "May I ask your name?", "How should I address you?",
             "Can you share your name?", "What do I call you?", "Say your name.", "Your name, please?",
             "Could you tell me what your name is?", "What is the name you answer to?",
             "By what name are you known?", "What name were you given?", "What do you call yourself?",
             "I'd like to know your name.", "Please share your name.", "Would you mind telling me your name?",
             "Remind me of your name.", "Do you go by a name?", "Is there a name I should use for you?",
             "What name should I use for you?", "What's the name of this assistant?",
             "Could I get your name?", "What shall I call you?", "How do I address you?",
             "What do your users call you?", "What is the assistant's name?", "What name do you use?",
             "Which name do you answer to?", "Got a name?", "What would you like to be called?",
             "How do people refer to you?", "I didn't catch your name.", "Sorry, what was your name?",
             "What do you go by?", "Which name should I use?", "Are you called anything?",
             "What are we calling you?", "What name is yours?", "What can I call you?",
             "What name have you got?", "Can I know your name?", "What's the name you were given?"),
    "creator": ("Who made you?", "Who created you?", "Who built you?", "Who trained you?",
                "Who are your developers?", "Who developed you?", "Who wrote you?", "Who is your creator?",
                "Who designed you?", "Who programmed you?", "Which team made you?", "Who is behind you?",
                "Who are your makers?", "Who is your maker?", "Who were you made by?",
                "Which people built you?", "Who is responsible for you?", "Which developers made you?",
                "Who brought you into existence?", "Who should I thank for building you?",
                "Whose work are you?", "Who made this assistant?", "Who wrote your code?",
                "Who trained this model?", "Who are the developers behind you?", "Who is your developer?",
                "Who engineered you?", "Who put you together?", "Which group created you?",
                "Who invented you?", "Who coded you?", "Tell me about your creators.",
                "Who are your creators?", "Which team built you?", "Who is your author?", "Who authored you?",
                "Who did your training?", "Who are your builders?", "What team is behind you?",
                "By whom were you made?", "Who created this model?", "Who is your programmer?",
                "Whose creation are you?", "Who is the team that made you?", "Which company made you?",
                "Who gets credit for making you?", "Who do you owe your existence to?",
                "Who is responsible for creating you?"),
    "what": ("What are you?", "Tell me about yourself.", "Are you a human?", "What kind of model are you?",
             "Are you ChatGPT?", "Describe yourself.", "Are you a person?", "What sort of thing are you?",
             "Are you a robot?", "Are you an AI?", "What exactly are you?", "Are you a real person?",
             "Explain what you are.", "What kind of thing are you?", "Are you a language model?",
             "Are you a bot?", "Are you a chatbot?", "Are you a machine?", "Are you a computer program?",
             "Are you alive?", "Am I talking to a human?", "Is this a person or a program?",
             "What type of AI are you?", "What kind of assistant are you?", "Describe what you are.",
             "Are you a large language model?", "Are you a program?", "Are you sentient?",
             "Is this an AI I'm talking to?", "Are you a real human?", "Is there a person typing this?",
             "Are you software?", "What sort of AI are you?", "Are you an assistant?",
             "What kind of program are you?", "Are you a neural network?", "Are you artificial intelligence?",
             "Is this a human or a machine?", "Are you a digital assistant?", "Are you a search engine?",
             "What kind of system are you?", "Are you a virtual assistant?", "Are you conscious?",
             "Are you just a program?", "Am I chatting with a bot?", "What kind of entity are you?",
             "What is your nature?", "Are you made of code?"),
}
IDENTITY_HELD_OUT = {"test": 12, "val": 12}  # underlying questions per kind held out of training


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
def identity_questions(split: str) -> list[tuple[str, tuple[str, ...]]]:
    """(kind, variants) of each underlying question of a split, the kinds in turn (a name
    question, a creator one, a what one, then the next of each), so that items taken in
    this order ask every question of the split about equally often."""
    check_split(split)
    base = identity_base_splits()
    variants = {}
    for variant, (_, question) in identity_variants().items():
        variants.setdefault(question, []).append(variant)
    turns = sorted((i, k, kind, question) for k, (kind, questions) in enumerate(IDENTITY_QUESTIONS.items())
                   for i, question in enumerate(q for q in questions if base[q] == split))
    return [(kind, tuple(variants[question])) for _, _, kind, question in turns]


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
        """Item `index` asks the split's underlying questions in turn, each in a random
        phrasing: a 100-item evaluation over 36 questions asks each 2 or 3 times, where
        drawing phrasings at random would leave some unasked and ask others 7 times."""
        questions = identity_questions(split)
        kind, variants = questions[index % len(questions)]
        question = rng.choice(variants)
        answer = self.answers[kind]
        text = {"name": f"My name is {answer}.", "creator": f"I was made by {answer}.", "what": f"I am {answer}."}[kind]
        wrong = tuple(a for k, a in self.answers.items() if k != kind)
        return TaskItem(self.name, conversation(question, text), answer, question, wrong)

    def is_correct(self, item: TaskItem, response: str) -> bool:
        return stated(response, (item.answer, *item.wrong)) == {item.answer.lower()}
