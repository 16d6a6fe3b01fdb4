import json
import re
import sys
from collections import Counter

import pytest

from speedrun.chat.calculator import evaluate
from speedrun.chat.conversations import TASKS, get_task, make_items, mixture, words
from speedrun.chat.identity import IDENTITY_QUESTIONS, identity_base_splits, identity_variants, normalise
from speedrun.chat.items import TaskItem, split_of
from speedrun.chat.user_conversations import ChatDataError, load_conversations


def response(item: TaskItem) -> str:
    """The reference answer's text parts, as the evaluation passes a model's reply."""
    content = item.messages[-1]["content"]
    return content if isinstance(content, str) else "".join(p["text"] for p in content if p["type"] == "text")


def tool_parts(item: TaskItem) -> tuple[str, str]:
    call, output, _ = item.messages[-1]["content"]
    assert (call["type"], output["type"]) == ("tool_call", "tool_output")
    return call["text"], output["text"]


def test_word_list():
    ws = words()
    assert len(ws) > 10_000 and ws == sorted(set(ws))
    assert all(w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 10 for w in ws)
    assert {"garden", "cat", "strawberry"} <= set(ws)


def test_word_list_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "english_words", None)
    with pytest.raises(ImportError, match="pip install english-words"):
        words.__wrapped__()


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_by_seed(task):
    for split in ("train", "val", "test"):
        items = make_items(task, split, 40, seed=0)
        assert items == make_items(task, split, 40, seed=0)
        assert items != make_items(task, split, 40, seed=1)
        assert all(item.task == task and item.messages[-1]["role"] == "assistant" for item in items)


@pytest.mark.parametrize("task", TASKS)
def test_train_val_and_test_keys_disjoint(task):
    keys = {split: {item.key for item in make_items(task, split, n, seed=0)}
            for split, n in (("train", 3000), ("val", 300), ("test", 300))}
    assert all(keys.values())
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"] and not keys["val"] & keys["test"]
    assert all(TASKS[task].split_of(key) == split for split, ks in keys.items() for key in ks)


def test_split_fractions():
    splits = [split_of(f"key {i}") for i in range(20000)]
    assert splits.count("test") / 20000 == pytest.approx(0.10, abs=0.01)
    assert splits.count("val") / 20000 == pytest.approx(0.05, abs=0.01)


def asks(question: str, text: str) -> bool:
    """Whether `text` asks `question` (as whole words, case and punctuation set aside)."""
    return f" {normalise(question)} " in f" {normalise(text)} "


def test_identity_holds_out_whole_questions():
    """No test question, with case and punctuation set aside, is trained or validated on,
    nor the underlying question with another greeting."""
    base = identity_base_splits()
    held = {split: {q for q, s in base.items() if s == split} for split in ("val", "test")}
    assert len(held["test"]) >= 30 and len(held["val"]) >= 30  # one question is worth at most ~3 points
    assert not held["test"] & held["val"]
    for kind, questions in IDENTITY_QUESTIONS.items():  # every kind is asked in every split, and mostly trained
        counts = Counter(base[q] for q in questions)
        assert counts["test"] >= 10 and counts["val"] >= 10 and counts["train"] >= 20, (kind, counts)
    for split in ("val", "test"):
        asked = make_items("identity", split, 300, 0)
        others = [i for other in ("train", "val", "test") if other != split
                  for i in make_items("identity", other, 2000, 0)]
        assert not {normalise(i.key) for i in asked} & {normalise(i.key) for i in others}
        assert all(any(asks(q, i.key) for q in held[split]) for i in asked)
        assert not any(asks(q, i.key) for i in others for q in held[split])


def test_no_identity_question_is_another_with_words_added():
    """"Who are you?" inside "Who are you, really?" would put a held-out question in training."""
    questions = [normalise(q) for qs in IDENTITY_QUESTIONS.values() for q in qs]
    assert len(set(questions)) == len(questions)
    assert not [(a, b) for a in questions for b in questions if a != b and f" {a} " in f" {b} "]


def test_an_evaluation_asks_every_held_out_question_about_equally_often():
    for split in ("val", "test"):
        held = {q for q, s in identity_base_splits().items() if s == split}
        items = make_items("identity", split, 100, 1337)
        asked = Counter(identity_variants()[item.key][1] for item in items)
        assert set(asked) == held and max(asked.values()) - min(asked.values()) <= 1
        assert max(Counter(item.answer for item in items).values()) <= 34  # the kinds in turn


def test_a_constant_reply_fails_identity():
    items = make_items("identity", "test", 100, 0)
    identity = TASKS["identity"]
    everything = "I am speedrun, a small language model trained from scratch with speedrun, " \
                 "made by the speedrun developers."
    assert not any(identity.is_correct(item, everything) for item in items)
    # the creator's name contains the model's: naming the creator does not count as naming itself
    creator = "I was made by the speedrun developers."
    for item in items:
        assert identity.is_correct(item, creator) == (item.answer == "the speedrun developers")
    answers = {item.answer for item in items}
    assert answers == {"speedrun", "the speedrun developers",
                       "a small language model trained from scratch with speedrun"}
    best = max(sum(identity.is_correct(i, response(j)) for i in items) for j in items)
    assert best < 60  # no one reply answers most questions


def test_word_tasks_hold_out_the_same_words():
    held = {item.key for task in ("spelling", "counting", "reversing") for item in make_items(task, "test", 200, 0)}
    for task in ("spelling", "counting", "reversing"):
        assert not held & {item.key for item in make_items(task, "train", 2000, 0)}


def test_addition_split_ignores_operand_order():
    for item in make_items("addition", "train", 300, 0):
        a, b = sorted(map(int, tool_parts(item)[0].split("+")))
        assert item.key == f"{a}+{b}"


def test_test_sets_are_distinct_while_the_pool_lasts():
    for task, options in [("spelling", {}), ("addition", {"digits": 3}), ("counting", {}), ("identity", {})]:
        items = make_items(task, "test", 500, 0, **options)
        assert len({item.key for item in items}) == 500
    pool = {variant for variant, (_, question) in identity_variants().items()
            if identity_base_splits()[question] == "test"}
    assert {item.key for item in make_items("identity", "test", 2 * len(pool), 0)} == pool


CORRUPT = {
    "addition": lambda item: f"The answer is {int(item.answer) + 1}.",
    "subtraction": lambda item: f"The answer is {int(item.answer) - 1}.",
    "spelling": lambda item: item.answer[2:],
    "counting": lambda item: response(item).replace(f"is {item.answer}.", f"is {int(item.answer) + 1}."),
    "reversing": lambda item: f"{item.answer} reversed is {item.answer[::-1]}.",
    "identity": lambda item: "I am a helpful assistant.",
}


@pytest.mark.parametrize("task", TASKS)
def test_reference_answers_are_correct_and_corrupted_ones_not(task):
    for item in make_items(task, "train", 100, 0) + make_items(task, "test", 100, 0):
        assert TASKS[task].is_correct(item, response(item))
        if not (task == "reversing" and item.key == item.key[::-1]):  # a reversed palindrome is still right
            assert not TASKS[task].is_correct(item, CORRUPT[task](item))


def test_tolerant_answer_checks():
    spell = make_items("spelling", "test", 1, 0)[0]
    word = spell.key
    assert TASKS["spelling"].is_correct(spell, f" {'-'.join(word.upper())}. ")
    assert not TASKS["spelling"].is_correct(spell, f"The word is {' '.join(word)}")
    rev = make_items("reversing", "test", 1, 0)[0]
    assert TASKS["reversing"].is_correct(rev, rev.answer)
    assert TASKS["reversing"].is_correct(rev, f"It is {rev.key[::-1]}!")
    add = make_items("addition", "test", 1, 0)[0]
    assert TASKS["addition"].is_correct(add, f"{tool_parts(add)[0]} = {add.answer}")


@pytest.mark.parametrize("task, op", [("addition", "+"), ("subtraction", "-")])
def test_arithmetic_tool_calls(task, op):
    negative = False
    for item in make_items(task, "train", 500, 0):
        call, output = tool_parts(item)
        a, b = map(int, call.split(op))
        assert evaluate(call) == output == item.answer == str(a + b if op == "+" else a - b)
        assert response(item) == f"The answer is {output}."
        question = item.messages[0]["content"]
        assert [int(x) for x in re.findall(r"\d+", question)] == ([b, a] if re.match("Subtract|Take", question)
                                                                  else [a, b])
        negative |= int(output) < 0
    assert negative or op == "+"


def test_three_digit_operands():
    for task, op in [("addition", "+"), ("subtraction", "-")]:
        for split in ("train", "test"):
            for item in make_items(task, split, 300, 0, digits=3):
                assert all(100 <= int(x) <= 999 for x in tool_parts(item)[0].split(op))
    lengths = {len(x) for item in make_items("addition", "train", 1000, 0) for x in tool_parts(item)[0].split("+")}
    assert lengths == {1, 2, 3, 4}


def test_counting_running_counts():
    answers = set()
    for item in make_items("counting", "train", 500, 0):
        text = response(item)
        spelled, answer = re.fullmatch(r"(.*)\. The answer is (\d+)\.", text).groups()
        tokens = spelled.split(" ")
        assert "".join(t[0] for t in tokens) == item.key
        matches = [t for t in tokens if ":" in t]
        assert [int(t.split(":")[1]) for t in matches] == list(range(1, len(matches) + 1))
        assert len({t[0] for t in matches}) <= 1 and int(answer) == len(matches) == int(item.answer)
        if matches:
            assert item.key.count(matches[0][0]) == len(matches)
        answers.add(int(answer))
    assert {0, 1, 2} <= answers


@pytest.mark.parametrize("split", ["train", "test"])
def test_counting_answers_come_in_thirds(split):
    """Absent, once and repeated letters in turn: no constant answer is right more than a third of the time."""
    items = make_items("counting", split, 99, 7)
    counts = Counter("2+" if int(i.answer) >= 2 else i.answer for i in items)
    assert counts == {"0": 33, "1": 33, "2+": 33}


def test_formats():
    spell = make_items("spelling", "train", 1, 0)[0]
    assert response(spell) == spell.answer == " ".join(spell.key)
    rev = make_items("reversing", "train", 1, 0)[0]
    assert response(rev) == f"{' '.join(rev.key)} reversed is {' '.join(rev.key[::-1])}."


def test_identity_options():
    custom = {"name": "Zed", "creator": "Ada Lab", "description": "a test bot"}
    default = make_items("identity", "train", 200, 0)
    items = make_items("identity", "train", 200, 0, identity=custom)
    assert [i.key for i in items] == [i.key for i in default]
    for item, before in zip(items, default):
        text = response(item)
        assert "speedrun" not in text and item.answer in custom.values() and item.answer in text
        assert TASKS["identity"].is_correct(item, text) and not TASKS["identity"].is_correct(item, response(before))
    assert {i.answer for i in mixture({"identity": 1}, 50, 0, identity=custom)} == set(custom.values())
    assert make_items("addition", "train", 5, 0, identity=custom) == make_items("addition", "train", 5, 0)


def test_bad_task_options():
    with pytest.raises(ValueError, match="unknown task 'nope'; the tasks are addition"):
        make_items("nope", "train", 1, 0)
    with pytest.raises(ValueError, match="has no option digit; its options: digits"):
        make_items("addition", "train", 1, 0, digit=3)
    with pytest.raises(ValueError, match="has no option"):
        get_task("spelling", digits=3)
    with pytest.raises(ValueError, match="digits must be"):
        make_items("addition", "train", 1, 0, digits=0)
    with pytest.raises(ValueError, match="non-empty string"):
        make_items("identity", "train", 1, 0, identity={"name": ""})
    with pytest.raises(ValueError, match="must differ"):
        make_items("identity", "train", 1, 0, identity={"name": "Ada", "creator": "ada"})
    with pytest.raises(ValueError, match="unknown split"):
        make_items("spelling", "dev", 1, 0)


def test_mixture():
    weights = {"addition": 3, "spelling": 1, "identity": 0.5}
    items = mixture(weights, 900, seed=0)
    counts = {task: sum(item.task == task for item in items) for task in weights}
    assert counts == {"addition": 600, "spelling": 200, "identity": 100}
    assert len(mixture({"addition": 1, "spelling": 1, "counting": 1}, 100, 0)) == 100
    assert items == mixture(weights, 900, seed=0) and items != mixture(weights, 900, seed=1)
    assert {item.task for item in items[:50]} == set(weights)  # shuffled, not grouped by task
    assert all(TASKS[item.task].split_of(item.key) == "test" for item in mixture(weights, 90, 0, split="test"))
    with pytest.raises(ValueError, match="non-negative"):
        mixture({"addition": -1}, 10, 0)


GOOD = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}]},
    [{"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": [{"type": "tool_call", "text": "2+2"}, {"type": "tool_output", "text": "4"},
                                       {"type": "text", "text": "4"}]}],
]


def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_load_conversations(tmp_path):
    path = write_lines(tmp_path / "chats.jsonl", [GOOD[0], "", GOOD[1]])
    assert load_conversations(path) == [GOOD[0]["messages"], GOOD[1]]


@pytest.mark.parametrize("bad, message", [
    ("{not json", "is not JSON"),
    ({"text": "hi"}, 'with a "messages" list'),
    ("42", 'with a "messages" list'),
    ([{"role": "user"}, {"role": "assistant", "content": "x"}], 'message 0 is not an object with "role"'),
    (["hi", {"role": "assistant", "content": "x"}], "message 0 is not an object"),
    ([{"role": "bot", "content": "x"}], "message 0 has role 'bot'; use system, user or assistant"),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "x"}, {"role": "assistant", "content": "x"}],
     "message 1 is a system message; a system message may only come first"),
    ([{"role": "user", "content": "x"}], "no assistant message"),
    ([], "no assistant message"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}], "message 0 content is a int"),
    ([{"role": "user", "content": [{"type": "text", "text": "x"}]}, {"role": "assistant", "content": "x"}],
     "message 0 content is a list"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}],
     "message 1 has a bad part"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": [{"type": "text", "text": 1}]}],
     "message 1 has a bad part"),
])
def test_load_conversations_rejects(tmp_path, bad, message):
    path = write_lines(tmp_path / "chats.jsonl", [GOOD[0], bad])
    with pytest.raises(ChatDataError) as error:
        load_conversations(path)
    text = str(error.value)
    assert "chats.jsonl line 2" in text and message in text and "\n" not in text


def test_load_conversations_empty_or_missing(tmp_path):
    with pytest.raises(ChatDataError, match="has no conversations"):
        load_conversations(write_lines(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(ChatDataError, match="cannot read"):
        load_conversations(tmp_path / "missing.jsonl")


def test_load_conversations_from_a_saved_dataset(tmp_path):
    """A hub dataset's "messages" column (hf:NAME, e.g. smol-smoltalk) or a folder saved with
    save_to_disk: each row checked as a JSONL line is."""
    datasets = pytest.importorskip("datasets")
    GOOD_MESSAGES = [GOOD[0]["messages"], [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]]
    ds = datasets.Dataset.from_dict({"messages": GOOD_MESSAGES, "source": ["a"] * len(GOOD_MESSAGES)})
    datasets.DatasetDict(train=ds, test=ds.select([0])).save_to_disk(str(tmp_path / "chats"))
    assert load_conversations(tmp_path / "chats") == GOOD_MESSAGES
    assert load_conversations(tmp_path / "chats", split="test") == GOOD_MESSAGES[:1]
    bad = datasets.Dataset.from_dict({"messages": [[{"role": "robot", "content": "x"}]]})
    bad.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ChatDataError, match="row 1: message 0 has role 'robot'"):
        load_conversations(tmp_path / "bad")
    datasets.Dataset.from_dict({"text": ["x"]}).save_to_disk(str(tmp_path / "no-messages"))
    with pytest.raises(ChatDataError, match="messages"):
        load_conversations(tmp_path / "no-messages")


def test_a_bad_conversations_file_is_a_one_line_error_from_the_cli(tmp_path, capsys, chat_run):
    from speedrun.cli import main

    path = write_lines(tmp_path / "chats.jsonl", ['{"messages": 3}'])
    assert main(["train", "chat-sft", f"data.conversations={json.dumps(str(path))}",
                 f"data.tokenizer_file={json.dumps(str(chat_run / 'tokenizer.json'))}", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "chats.jsonl line 1" in err and "Traceback" not in err
