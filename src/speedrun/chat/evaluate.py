"""Task accuracy by generation: the model answers held-out questions greedily,
with the calculator, and each task's own rule extracts and checks the answer.

The aggregate score centres each task on chance, (accuracy - chance) /
(1 - chance), and averages over tasks, so 0 means no better than guessing and
1 means every answer right.
"""

from __future__ import annotations

import sys
import time

from .engine import Engine
from .tasks import TASKS, make_items
from .template import response_text

EVAL_OPTIONS = {"addition": {"digits": 3}, "subtraction": {"digits": 3}}  # the benchmark asks 3-digit sums


def eval_items(tasks: list[str], n: int, seed: int, identity: dict) -> dict[str, list]:
    """n held-out items per task (never in the training split)."""
    items = {}
    for name in tasks:
        options = dict(EVAL_OPTIONS.get(name, {}))
        if name == "identity":
            options["identity"] = identity
        items[name] = make_items(name, "test", n, seed, **options)
    return items


def evaluate_tasks(engine: Engine, items: dict[str, list], max_new_tokens: int = 64,
                   progress: bool = True, examples: int = 3) -> dict:
    """Per-task accuracy, the centred aggregate, and a few transcripts per task."""
    from tqdm import tqdm

    start = time.perf_counter()
    results = {}
    total = sum(map(len, items.values()))
    with tqdm(total=total, desc="evaluating tasks", unit="item", disable=not (progress and sys.stderr.isatty()),
              leave=False) as bar:
        for name, task_items in items.items():
            task = TASKS[name]
            correct, shown = 0, []
            for item in task_items:
                reply = engine.reply(item.messages[:-1], max_new_tokens=max_new_tokens)
                ok = task.is_correct(item, response_text(reply["content"]))
                correct += ok
                if len(shown) < examples:
                    shown.append({"question": item.messages[-2]["content"], "reply": reply["content"],
                                  "expected": item.answer, "correct": ok})
                bar.update(1)
            accuracy = correct / max(len(task_items), 1)
            results[name] = {"accuracy": accuracy, "correct": correct, "total": len(task_items),
                             "chance": task.chance, "centred": (accuracy - task.chance) / (1 - task.chance),
                             "examples": shown}
    score = sum(r["centred"] for r in results.values()) / max(len(results), 1)
    return {"tasks": results, "score": score, "seconds": time.perf_counter() - start}
