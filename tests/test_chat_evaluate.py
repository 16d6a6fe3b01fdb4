"""Task evaluation: the constant-answer baseline, the base model's few-shot prompt, arithmetic
without the tool, and validation kept apart from the evaluated items."""

import json

import pytest
import torch

from speedrun.chat.engine import Engine
from speedrun.chat.evaluate import (
    EVAL_OPTIONS,
    constant_baseline,
    eval_items,
    evaluate_tasks,
    few_shot_prompt,
    without_tool,
)
from speedrun.chat.conversations import TASKS, make_items
from speedrun.chat.items import TaskItem
from speedrun.chat.template import (ASSISTANT_END, CHAT_SPECIAL_TOKENS, TOOL_END, TOOL_START, ChatTemplate,
                                    train_chat_tokenizer)
from speedrun.cli import main
from speedrun.config import ChatData, ModelConfig

IDENTITY = {"name": "speedrun", "creator": "the speedrun developers",
            "description": "a small language model trained from scratch with speedrun"}


@pytest.fixture(scope="module")
def tok():
    return train_chat_tokenizer([f"What is {i} plus {i * 3}? The answer is {i * 4}. spell garden"
                                 for i in range(300)], vocab_size=320)


def item(task: str, answer: str, reply: str, key: str, wrong=()) -> TaskItem:
    return TaskItem(task, [{"role": "user", "content": f"question about {key}"},
                           {"role": "assistant", "content": reply}], answer, key, tuple(wrong))


def test_constant_baseline_is_the_majority_answer():
    counting = [item("counting", n, f"x. The answer is {n}.", f"w{k}") for k, n in enumerate("1121013")]
    best = constant_baseline(TASKS["counting"], counting)
    assert best == {"reply": "x. The answer is 1.", "accuracy": pytest.approx(4 / 7)}
    spelling = [item("spelling", " ".join(w), " ".join(w), w) for w in ("cat", "dog", "owl", "emu")]
    assert constant_baseline(TASKS["spelling"], spelling)["accuracy"] == pytest.approx(1 / 4)
    name, creator, what = IDENTITY["name"], IDENTITY["creator"], IDENTITY["description"]
    identity = [item("identity", name, f"My name is {name}.", "q1", (creator, what)),
                item("identity", name, f"My name is {name}.", "q2", (creator, what)),
                item("identity", creator, f"I was made by {creator}.", "q3", (name, what))]
    assert constant_baseline(TASKS["identity"], identity) == {"reply": "My name is speedrun.",
                                                             "accuracy": pytest.approx(2 / 3)}


def test_few_shot_prompt_is_plain_text():
    shots = make_items("spelling", "train", 3, 0)
    question = make_items("spelling", "test", 1, 0)[0]
    prompt = few_shot_prompt(shots, question)
    assert prompt.count("Question: ") == 4 and prompt.endswith(f"Question: {question.messages[0]['content']}\nAnswer:")
    assert f"Answer: {shots[0].answer}\n\n" in prompt
    assert not any(token in prompt for token in CHAT_SPECIAL_TOKENS)
    arithmetic = few_shot_prompt(make_items("addition", "train", 2, 0, digits=3), question)
    assert "The answer is" in arithmetic and "+" not in arithmetic.split("Answer:")[1].split("\n")[0]


class ToolFirstModel(torch.nn.Module):
    """Prefers opening a tool call at every step; otherwise writes its script, then ends the turn."""

    def __init__(self, tok, script):
        super().__init__()
        self.cfg = ModelConfig(block_size=128, vocab_size=tok.vocab_size)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        ids = ChatTemplate(tok).ids
        self.tool, self.script, self.step = ids[TOOL_START], [*script, ids[TOOL_END], ids[ASSISTANT_END]], 0

    def new_cache(self):
        return []

    def forward(self, x, cache=None, start=0, last=0):
        logits = torch.zeros(1, 1, self.cfg.vocab_size)
        logits[0, -1, self.script[min(self.step, len(self.script) - 1)]] = 2.0
        logits[0, -1, self.tool] = 3.0
        self.step += 1
        return logits


def test_arithmetic_without_the_tool_never_calls_it(tok):
    script = tok.encode("The answer is 4.")
    model = ToolFirstModel(tok, script)
    tool = ChatTemplate(tok).ids[TOOL_START]
    assert model(torch.zeros(1, 1, dtype=torch.long))[0, -1].argmax() == tool
    engine = without_tool(Engine(ToolFirstModel(tok, script), tok))
    logits = engine.model(torch.zeros(1, 1, dtype=torch.long))
    assert logits[0, -1, tool] == float("-inf") and logits[0, -1].argmax() == script[0]
    engine = without_tool(Engine(ToolFirstModel(tok, script), tok))
    reply = engine.reply([{"role": "user", "content": "What is 2 plus 2?"}], max_new_tokens=30)
    assert reply["content"] == [{"type": "text", "text": "The answer is 4."}]


def test_rows_baselines_and_score_with_a_scripted_engine(tok):
    class Fixed(Engine):
        """Answers every question with the same words."""

        def reply(self, messages, **options):
            return {"role": "assistant", "content": "The answer is 1."}

    engine = Fixed(ToolFirstModel(tok, []), tok)
    items = {"counting": [item("counting", n, f"x. The answer is {n}.", f"w{k}") for k, n in enumerate("1120")],
             "addition": [item("addition", n, f"The answer is {n}.", f"a{k}") for k, n in enumerate(["1", "5"])]}
    result = evaluate_tasks(engine, items, progress=False)
    assert set(result["tasks"]) == {"counting", "addition", "addition_no_tool"}
    counting = result["tasks"]["counting"]
    assert counting["accuracy"] == counting["constant"] == 0.5 and counting["centred"] == 0.0
    addition = result["tasks"]["addition"]
    assert addition["accuracy"] == addition["constant"] == 0.5
    assert result["tasks"]["addition_no_tool"]["accuracy"] == 0.0  # the scripted model alone says nothing
    assert result["score"] == 0.0 and result["prompt"] == "chat template"


def test_sft_validation_is_disjoint_from_evaluation(tmp_path, tok):
    from speedrun.tasks.chat import ChatTask, identity_options, task_weights

    (tmp_path / "tok.json").write_text(tok.to_json())
    cfg = ChatData(tokenizer_file=str(tmp_path / "tok.json"), train_items=50, val_items=300)
    task = ChatTask(cfg, block_size=192, seed=0)
    evaluated = eval_items(list(task_weights(cfg)), 100, 1337, identity_options(cfg))
    for name, items in evaluated.items():
        val = [i for i in task.val_items if i.task == name]
        assert val and not {i.key for i in val} & {i.key for i in items}
        if name in EVAL_OPTIONS:  # the sums asked are 3-digit; validation's keys still never repeat them
            assert all(TASKS[name].split_of(i.key) == "val" for i in val)


def test_pipeline_streams_the_users_corpus_and_drops_exact_duplicates(tmp_path, monkeypatch):
    """The user's corpus is read where it is (never copied or held whole): the tokenizer
    learns from its training documents, and the base stage prepares it, copies dropped."""
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.jsonl"
    docs = [f"document {i % 40}: some words about the number {i % 40}" for i in range(120)]
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "chat"
    assert main(["chat-pipeline", "--out", str(out), "--data", str(corpus), "--stage", "tokenizer", "--stage", "base",
                 "--quiet", "vocab_size=300", "val_fraction=0.2", "base.train.max_steps=2", "base.train.eval_every=0",
                 "base.model.block_size=32", "base.data.sample_tokens=0"]) == 0
    assert not (out / "corpus.jsonl").exists()
    stats = json.loads((out / "tokenizer" / "stats.json").read_text())
    assert stats["corpus"] == str(corpus) and stats["val_bytes"] > 0 and "documents" not in stats
    manifest = json.loads(next((tmp_path / "cache" / "prepared").glob("corpus.jsonl-*/manifest.json")).read_text())
    assert manifest["documents_read"] == 120 and manifest["duplicates_dropped"] == 80
