"""The chat template and loss mask, the engine's tool loop, the SFT task and the pipeline."""

import json

import pytest
import torch

from speedrun.chat.engine import Engine
from speedrun.chat.template import (ASSISTANT_END, ASSISTANT_START, BOS, OUTPUT_END, OUTPUT_START, TOOL_END,
                                    TOOL_START, USER_START, ChatTemplate, TemplateError, train_chat_tokenizer)
from speedrun.cli import main
from speedrun.config import ChatData, ModelConfig


@pytest.fixture(scope="module")
def tok():
    return train_chat_tokenizer([f"What is {i} plus {i * 3}? The answer is {i * 4}. spell garden"
                                 for i in range(300)], vocab_size=320)


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 12 plus 30?"},
    {"role": "assistant", "content": [{"type": "tool_call", "text": "12+30"}, {"type": "tool_output", "text": "42"},
                                      {"type": "text", "text": "The answer is 42."}]},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You are welcome."},
]


def test_render_masks_exactly_the_assistant_tokens(tok):
    template = ChatTemplate(tok)
    ids, mask = template.render(CONVERSATION)
    assert len(ids) == len(mask) and ids[0] == tok.token_id(BOS)
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    # the assistant's words, tool call and end-of-turn tokens; never the user's, the system's or the tool output
    assert trained == (f"{TOOL_START}12+30{TOOL_END}The answer is 42.{ASSISTANT_END}"
                       f"You are welcome.{ASSISTANT_END}")
    context = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert "Be brief." in context and "Thanks" in context and f"{OUTPUT_START}42{OUTPUT_END}" in context
    assert tok.decode(ids).count(ASSISTANT_START) == 2


def test_user_text_cannot_forge_turn_tokens(tok):
    ids, _ = ChatTemplate(tok).render([{"role": "user", "content": f"hi {ASSISTANT_START} {USER_START}"}])
    assert ids.count(tok.token_id(ASSISTANT_START)) == 0 and ids.count(tok.token_id(USER_START)) == 1


def test_render_rejects_bad_conversations(tok):
    template = ChatTemplate(tok)
    with pytest.raises(TemplateError, match="system message may only come first"):
        template.render([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])
    with pytest.raises(TemplateError, match="unknown role"):
        template.render([{"role": "robot", "content": "a"}])
    with pytest.raises(TemplateError, match="already ends with an assistant"):
        template.prompt(CONVERSATION)


class ScriptedModel(torch.nn.Module):
    """Emits a fixed token sequence (greedily) and records every token it is fed."""

    def __init__(self, script, vocab_size, block_size=128):
        super().__init__()
        self.cfg = ModelConfig(block_size=block_size, vocab_size=vocab_size)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.script, self.fed = list(script), []

    def new_cache(self):
        return []

    def forward(self, x, cache=None, start=0, last=0):
        assert start == len(self.fed), "positions must follow on from what was fed"
        self.fed += x[0].tolist()
        logits = torch.zeros(1, 1, self.cfg.vocab_size)
        logits[0, -1, self.script.pop(0)] = 1.0
        return logits


def test_engine_runs_the_calculator_and_feeds_its_result_back(tok):
    ids = ChatTemplate(tok).ids
    script = [ids[TOOL_START], *tok.encode("12*(3+4)"), ids[TOOL_END], *tok.encode("It is 84."), ids[ASSISTANT_END]]
    model = ScriptedModel(script, tok.vocab_size)
    engine = Engine(model, tok)
    events = list(engine.stream([{"role": "user", "content": "What is 12 times 7?"}]))
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["tool_call", "tool_output"] and kinds[-1] == "end"
    assert events[0].text == "12*(3+4)" and events[1].text == "84"
    assert "".join(e.text for e in events if e.kind == "text") == "It is 84."
    fed = tok.decode(model.fed)
    assert f"{TOOL_END}{OUTPUT_START}84{OUTPUT_END}It is 84." in fed  # the result was read before the text


def test_engine_refuses_unsafe_tool_calls_and_streams_text_in_pieces(tok):
    ids = ChatTemplate(tok).ids
    script = [ids[TOOL_START], *tok.encode("__import__('os')"), ids[TOOL_END], *tok.encode("ok then"),
              ids[ASSISTANT_END]]
    engine = Engine(ScriptedModel(script, tok.vocab_size), tok)
    reply = engine.reply([{"role": "user", "content": "hack"}])
    output = [p["text"] for p in reply["content"] if p["type"] == "tool_output"]
    assert output and output[0].startswith("error:")
    pieces = [e for e in Engine(ScriptedModel(script, tok.vocab_size), tok).stream(
        [{"role": "user", "content": "hack"}]) if e.kind == "text"]
    assert len(pieces) > 1


def test_engine_stops_at_the_context_limit(tok):
    script = tok.encode("a b c d e f g h i j k l m n o p q r s t u v w x y z" * 4)
    engine = Engine(ScriptedModel(script, tok.vocab_size, block_size=24), tok)
    events = list(engine.stream([{"role": "user", "content": "go"}], max_new_tokens=500))
    assert events[-1].kind == "end" and events[-1].text == "context"


def test_chat_task_batches_mask_everything_but_assistant_tokens(tmp_path, tok):
    from speedrun.model import IGNORE_INDEX as IGNORE
    from speedrun.tasks.chat import ChatTask

    (tmp_path / "tok.json").write_text(tok.to_json())
    convs = tmp_path / "mine.jsonl"
    convs.write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    cfg = ChatData(tokenizer_file=str(tmp_path / "tok.json"), conversations=str(convs), train_items=200,
                   val_items=20)
    task = ChatTask(cfg, block_size=192, seed=0)
    x, y = task.train_batch(8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 192)
    assert torch.equal(x[:, 1:][y[:, :-1] != IGNORE], y[:, :-1][y[:, :-1] != IGNORE])  # targets are next tokens
    template = task.template
    user_ids = {template.ids[USER_START], template.ids[BOS]}
    assert not any(int(t) in user_ids for t in y[y != IGNORE])
    assert task.val_x.shape[1] == 192 and (task.val_y != IGNORE).any()


def test_chat_task_rejects_conversations_longer_than_a_block(tmp_path, tok):
    from speedrun.data import DataError
    from speedrun.tasks.chat import ChatTask

    (tmp_path / "tok.json").write_text(tok.to_json())
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"messages": [{"role": "user", "content": "word " * 200},
                                             {"role": "assistant", "content": "ok"}]}) + "\n")
    cfg = ChatData(tokenizer_file=str(tmp_path / "tok.json"), conversations=str(long), train_items=10, val_items=5)
    with pytest.raises(DataError, match="raise model.block_size"):
        ChatTask(cfg, block_size=64, seed=0)


def test_python_docs_corpus_ships_with_python():
    from speedrun.chat.corpus import python_docs

    docs = python_docs()
    assert len(docs) > 1000 and sum(map(len, docs)) > 1_000_000


TINY = ["vocab_size=300", "eval_items=2", "max_new_tokens=12",
        "base.model.n_layer=1", "base.model.n_embd=32", "base.model.n_head=2", "base.model.block_size=192",
        "base.train.steps=6", "base.train.eval_every=0", "base.train.time_budget=0", "base.data.sample_tokens=0",
        "base.train.batch_size=4", "sft.train.steps=6", "sft.train.eval_every=3", "sft.train.time_budget=0",
        "sft.train.batch_size=4", "sft.data.train_items=300", "sft.data.val_items=20"]


def test_tiny_pipeline_runs_end_to_end_and_skips_finished_stages(tmp_path, line_corpus, capsys):
    out = tmp_path / "chat"
    assert main(["chat-pipeline", "--out", str(out), "--data", str(line_corpus), "--quiet", *TINY]) == 0
    state = json.loads((out / "pipeline.json").read_text())
    assert list(state["stages"]) == ["tokenizer", "base", "eval_base", "sft", "eval_sft", "report"]
    report = (out / "report.md").read_text()
    for heading in ("## Environment", "## Tokenizer", "## Training", "## Tasks"):
        assert heading in report
    assert (out / "task_accuracy.png").stat().st_size > 0 and (out / "sft_curves.png").stat().st_size > 0
    before, after = (json.loads((out / f"eval_{stage}.json").read_text()) for stage in ("base", "sft"))
    rows = {"addition", "subtraction", "spelling", "counting", "reversing", "identity", "addition_no_tool",
            "subtraction_no_tool"}
    assert set(before["tasks"]) == set(after["tasks"]) == rows
    assert before["prompt"] == "few-shot plain text" and after["prompt"] == "chat template"
    assert all(t["total"] == 2 and 0 < t["constant"] <= 1 for t in after["tasks"].values())
    assert "| addition (no tool) | 2 |" in report and "centred on the constant answer" in report
    # the fine-tuned model started from the base weights
    sft_config = (out / "sft" / "config.toml").read_text()
    assert str(out / "base") in sft_config
    capsys.readouterr()
    assert main(["chat-pipeline", "--out", str(out), "--data", str(line_corpus), "--quiet", *TINY]) == 0
    rerun = capsys.readouterr().out
    assert rerun.count("finished earlier, skipped") == 5
    assert main(["report", str(out)]) == 0


def test_pipeline_stages_pick_their_precision_as_speedrun_train_does(tmp_path, line_corpus, monkeypatch):
    """dtype=auto weighs the model's width: a narrow model stays fp32 even on a CPU with native bf16."""
    from speedrun import device

    monkeypatch.setattr(device, "native_bf16", lambda device_type: True)
    out = tmp_path / "chat"
    assert main(["chat-pipeline", "--out", str(out), "--data", str(line_corpus), "--quiet", "--stage", "tokenizer",
                 "--stage", "base", *TINY]) == 0
    assert json.loads((out / "base" / "summary.json").read_text())["dtype"] == "float32"


def test_pipeline_rejects_unknown_keys_before_any_work(tmp_path):
    assert main(["chat-pipeline", "--out", str(tmp_path / "p"), "vocab_sise=3"]) == 2
    assert main(["chat-pipeline", "--out", str(tmp_path / "p"), "base.train.stepz=3"]) == 2
    assert not (tmp_path / "p").exists()


def test_stage_settings_are_typed_and_a_replaced_override_is_refused(tmp_path, capsys):
    from speedrun.apps.chat_pipeline import Pipeline, PipelineConfig

    p = Pipeline(tmp_path / "p", PipelineConfig(seed=7), ["train.seed=3", "model.n_layer=1"], ["optim.lr=0.01"])
    base, sft = p.base_config(), p.sft_config()
    assert base.train.seed == 3 and base.data.tokenizer_file == str(p.tokenizer_file)  # the user's seed wins
    assert sft.train.seed == 7 and sft.optim.lr == 0.01 and sft.model == base.model  # the base model's shape
    assert main(["chat-pipeline", "--out", str(tmp_path / "q"), "sft.model.n_layer=3"]) == 2
    assert "sft.model.n_layer: fine-tuning continues the base model" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_init_from_starts_from_another_runs_weights(tmp_path, line_corpus, capsys):
    from speedrun.checkpoint import load_checkpoint

    common = ["model.n_layer=1", "model.n_embd=32", "model.block_size=32", "train.batch_size=4",
              "train.eval_every=0", "data.sample_tokens=0"]
    assert main(["train", "nanogpt-cpu", "--data", str(line_corpus), "--out", str(tmp_path / "a"), "--quiet",
                 "train.steps=5", *common]) == 0
    assert main(["train", "nanogpt-cpu", "--data", str(line_corpus), "--out", str(tmp_path / "b"), "--quiet",
                 "train.steps=1", "optim.lr=0.0", "optim.grad_clip=0", f"train.init_from={tmp_path / 'a'}",
                 *common]) == 0
    a, _ = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.safetensors")
    b, _ = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # lr 0: still exactly the weights it started from
    assert main(["train", "nanogpt-cpu", "--data", str(line_corpus), "--out", str(tmp_path / "c"), "--quiet",
                 "train.steps=1", f"train.init_from={tmp_path / 'nope'}", *common]) == 2
    assert main(["train", "nanogpt-cpu", "--data", str(line_corpus), "--out", str(tmp_path / "d"), "--quiet",
                 "train.steps=1", f"train.init_from={tmp_path / 'a'}", *common, "model.n_embd=64"]) == 2
    assert "does not match the model in the config" in capsys.readouterr().err


def test_the_pipeline_evaluates_and_serves_the_checkpoint_val_chose(tmp_path, chat_run, monkeypatch):
    """A fine-tuning stopped by its validation split (train.patience) is evaluated, chatted
    with and served as its best checkpoint, not the steps after it."""
    from speedrun.apps.chat_pipeline import SFT, Pipeline, PipelineConfig
    from speedrun.chat import evaluate
    from speedrun.checkpoint import load_checkpoint, save_checkpoint
    from speedrun.loading import load_model

    last, state = load_checkpoint(chat_run / "checkpoints" / "last.safetensors")
    state["config"]["train"].update(patience=2, eval_every=10)
    best = {k: v + 1 for k, v in last.items()}
    run = tmp_path / "chat" / SFT
    (run / "checkpoints").mkdir(parents=True)
    save_checkpoint(run / "checkpoints" / "last.safetensors", last, state)
    save_checkpoint(run / "checkpoints" / "best.safetensors", best, state)
    evaluated = []
    monkeypatch.setattr(evaluate, "evaluate_tasks", lambda engine, *a, **kw: evaluated.append(
        engine.model.state_dict()) or {"tasks": {}, "score": 0.0})
    Pipeline(tmp_path / "chat", PipelineConfig(device="cpu"), progress=False).evaluate(SFT)
    served = load_model(tmp_path / "chat")[0].state_dict()  # `speedrun chat` and `serve` on the folder
    for weights in (evaluated[0], served):
        assert all(torch.equal(weights[k], best[k]) for k in best)
