"""Engines for the chat frontends' tests, built on the `chat_run` fixture's untrained model.

At its initial scale that model ends its turn at once or repeats one token, so
its answers could not show streaming, nor tell two conversations apart.
"""

import time

import torch

from speedrun.chat.engine import Engine, Event
from speedrun.loading import load_engine


def talkative_engine(run) -> Engine:
    """The run's model with large random weights and an untied head that reaches only printable
    tokens: greedy answers are visible text, run to the token limit and differ by conversation."""
    engine = load_engine(run)
    model, generator = engine.model, torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        model.head.weight = torch.nn.Parameter(torch.randn(model.head.weight.shape, generator=generator))
        pieces = [engine.tok.decode([i]) for i in range(model.cfg.vocab_size)]
        unprintable = [i for i, piece in enumerate(pieces)
                       if i in engine.special or not piece.isprintable() or "\ufffd" in piece]
        model.head.weight[unprintable] = -1e4
    return engine


class SlowEngine(Engine):
    """An engine that takes `seconds` per event, as a larger model would, so that
    conversations sent at the same time are still being answered at the same time."""

    def __init__(self, engine: Engine, seconds: float):
        super().__init__(engine.model, engine.tok)
        self.seconds = seconds

    def stream(self, messages, **options):
        for event in super().stream(messages, **options):
            time.sleep(self.seconds)
            yield event


class ScriptedEngine(Engine):
    """Answers every conversation with the same events, a tool call among them,
    and keeps the conversations it was sent."""

    EVENTS = [Event("text", "Let me add. "), Event("tool_call", "482+137"), Event("tool_output", "619"),
              Event("text", " It is "), Event("text", "619."), Event("end", "end")]

    def __init__(self, engine: Engine):
        super().__init__(engine.model, engine.tok)
        self.received = []

    def stream(self, messages, **options):
        self.received.append(messages)
        yield from self.EVENTS
