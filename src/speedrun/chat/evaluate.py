"""Task accuracy by generation, beside two baselines, on held-out (test) items.

- The chat model answers in the chat template, greedily, with the calculator.
  Arithmetic is asked again with the tool disabled (the tool-call token is never
  chosen), so the table shows what the model computes itself as well as how well
  it uses the tool.
- The base model is asked few-shot in plain text, since it never saw the chat
  tokens: FEW_SHOT solved examples of the task from the training split, then the
  question; its answer is the text up to the first line break. It has no tool.
- The constant baseline is the best score of one fixed reply given to every
  question: each test item's reference reply is tried on all of them and the
  best kept (for tasks checked by answer equality, the majority answer).

Each task's answer is extracted and checked by its own rule. The aggregate score
centres each task on its constant baseline, (accuracy - constant) /
(1 - constant), and averages over the tasks (the no-tool rows are shown, not
averaged): 0 is no better than always giving the same reply, 1 every answer right.
"""

from __future__ import annotations

import sys
import time

import torch

from ..model import generate
from .engine import Engine
from .conversations import TASKS, make_items
from .items import Task, TaskItem
from .template import TOOL_START, response_text

EVAL_OPTIONS = {"addition": {"digits": 3}, "subtraction": {"digits": 3}}  # the benchmark asks 3-digit sums
NO_TOOL_TASKS = ("addition", "subtraction")  # also scored with the calculator disabled
FEW_SHOT = 3  # solved examples before the base model's question


def eval_items(tasks: list[str], n: int, seed: int, identity: dict, split: str = "test") -> dict[str, list]:
    """n items per task from `split`: "test" for evaluation (never trained or validated
    on), "train" for the base model's few-shot examples."""
    items = {}
    for name in tasks:
        options = dict(EVAL_OPTIONS.get(name, {}))
        if name == "identity":
            options["identity"] = identity
        items[name] = make_items(name, split, n, seed, **options)
    return items


def reference_reply(item: TaskItem) -> str:
    """The words of the item's reference answer, without tool calls."""
    return response_text(item.messages[-1]["content"])


def constant_baseline(task: Task, items: list[TaskItem]) -> dict:
    """The best accuracy of one reply given to every item, and that reply."""
    best = {"reply": "", "accuracy": 0.0}
    for reply in dict.fromkeys(map(reference_reply, items)):
        accuracy = sum(task.is_correct(item, reply) for item in items) / max(len(items), 1)
        if accuracy > best["accuracy"]:
            best = {"reply": reply, "accuracy": accuracy}
    return best


def few_shot_prompt(shots: list[TaskItem], item: TaskItem) -> str:
    """Plain text: solved questions, then the item's question, for a model without chat tokens."""
    solved = "".join(f"Question: {s.messages[-2]['content']}\nAnswer: {reference_reply(s)}\n\n" for s in shots)
    return f"{solved}Question: {item.messages[-2]['content']}\nAnswer:"


def plain_completion(engine: Engine, prompt: str, max_new_tokens: int) -> str:
    """The model's greedy continuation of plain text, up to the first line break."""
    ids = engine.tok.encode(prompt)
    newline = engine.tok.encode("\n")
    idx = torch.tensor([ids], device=engine.device)
    with engine.autocast():
        out = generate(engine.model, idx, max_new_tokens, stop_token=newline[0] if len(newline) == 1 else None)
    return engine.tok.decode(out[0, len(ids):].tolist()).split("\n", 1)[0].strip()


class WithoutTool(torch.nn.Module):
    """A chat model that never opens a tool call: its tool-call token gets no probability,
    so arithmetic is answered by the model alone."""

    def __init__(self, model, tool_start: int):
        super().__init__()
        self.inner, self.cfg, self.tool_start = model, model.cfg, tool_start

    def new_cache(self):
        return self.inner.new_cache()

    def forward(self, *args, **kwargs):
        logits = self.inner(*args, **kwargs)
        logits[..., self.tool_start] = float("-inf")
        return logits


def without_tool(engine: Engine) -> Engine:
    return Engine(WithoutTool(engine.model, engine.template.ids[TOOL_START]), engine.tok, engine.autocast)


def score_row(task: Task, items: list[TaskItem], answer, examples: int, tick) -> dict:
    """Accuracy of `answer(item) -> reply content` on the items, beside the constant baseline."""
    correct, shown = 0, []
    for item in items:
        content = answer(item)
        ok = task.is_correct(item, response_text(content))
        correct += ok
        if len(shown) < examples:
            shown.append({"question": item.messages[-2]["content"], "reply": content,
                          "expected": item.answer, "correct": ok})
        tick()
    accuracy = correct / max(len(items), 1)
    constant = constant_baseline(task, items)
    centred = (accuracy - constant["accuracy"]) / (1 - constant["accuracy"]) if constant["accuracy"] < 1 else 0.0
    return {"accuracy": accuracy, "correct": correct, "total": len(items), "constant": constant["accuracy"],
            "constant_reply": constant["reply"], "centred": centred, "examples": shown}


def evaluate_tasks(engine: Engine, items: dict[str, list], max_new_tokens: int = 64, progress: bool = True,
                   examples: int = 3, shots: dict[str, list] | None = None) -> dict:
    """Per-task results (rows `addition`, `addition_no_tool`, ...), the centred score and
    a few transcripts per row. With `shots` (solved examples per task) the model is
    prompted few-shot in plain text, as a base model must be; otherwise in the chat template."""
    from tqdm import tqdm

    start = time.perf_counter()
    plain = shots is not None
    no_tool = None if plain else without_tool(engine)
    results = {}
    total = sum(len(v) * (1 if plain or k not in NO_TOOL_TASKS else 2) for k, v in items.items())
    with tqdm(total=total, desc="evaluating tasks", unit="item", disable=not (progress and sys.stderr.isatty()),
              leave=False) as bar:
        for name, task_items in items.items():
            task = TASKS[name]
            if plain:
                results[name] = score_row(task, task_items, lambda item: plain_completion(
                    engine, few_shot_prompt(shots[name], item), max_new_tokens), examples, bar.update)
                if name in NO_TOOL_TASKS:  # plain text has no tool: the no-tool row is the same measurement
                    results[f"{name}_no_tool"] = results[name]
                continue
            for row, eng in [(name, engine)] + ([(f"{name}_no_tool", no_tool)] if name in NO_TOOL_TASKS else []):
                results[row] = score_row(task, task_items, lambda item: eng.reply(
                    item.messages[:-1], max_new_tokens=max_new_tokens)["content"], examples, bar.update)
    main_rows = [results[name] for name in items]
    score = sum(r["centred"] for r in main_rows) / max(len(main_rows), 1)
    return {"tasks": results, "score": score, "prompt": "few-shot plain text" if plain else "chat template",
            "seconds": time.perf_counter() - start}
