"""Generation for chat: an assistant turn streamed token by token, with the calculator.

When the model opens a tool call, the engine collects the expression until
the model closes it, evaluates it with the safe calculator, and feeds the
result back inside the tool-output tokens as if the model had read it; then
the model continues its turn. The KV cache holds the conversation, so each
new token costs one position of compute.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError
from ..model import sample_next
from ..rundir import ChatRunDir, RunDir
from .calculator import CalculatorError, evaluate
from .template import (
    OUTPUT_END,
    OUTPUT_START,
    TOOL_END,
    TOOL_START,
    ChatTemplate,
    parts,
)

# How a chat model samples when someone talks with it (the terminal chat, the server,
# an export's generation_config), as nanochat's chat does; evaluation stays greedy
# (the stream's own defaults), so its scores repeat.
CHAT_TEMPERATURE = 0.6
CHAT_TOP_K = 50


class PromptTooLong(ValueError):
    """The conversation leaves no room for an answer in the model's context."""


@dataclass
class Event:
    kind: str  # "text" (a piece of the answer), "tool_call", "tool_output" or "end"
    text: str  # for "end": why the turn ended ("end", "max_tokens" or "context")


def run_calculator(expression: str) -> str:
    try:
        return evaluate(expression)
    except CalculatorError as e:
        return f"error: {e}"


class Engine:
    def __init__(self, model, tokenizer, autocast=contextlib.nullcontext):
        self.model, self.tok, self.autocast = model.eval(), tokenizer, autocast
        self.template = ChatTemplate(tokenizer)
        self.block_size = model.cfg.block_size
        self.device = next(model.parameters()).device
        self.special = set(tokenizer.special_ids.values())

    def check_prompt(self, prompt: list[int], room: int = 1) -> None:
        """Refuse a prompt that leaves fewer than `room` positions for the answer."""
        if len(prompt) + room > self.block_size:
            raise PromptTooLong(f"the conversation is {len(prompt)} tokens and the model reads at most "
                                f"{self.block_size}, with room for the answer; start a new conversation "
                                "or send a shorter message")

    @torch.inference_mode()
    def stream(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, seed: int | None = None):
        """Yield Events for the assistant's reply to `messages` (greedy at temperature 0)."""
        prompt = self.template.prompt(messages)
        # room for a useful answer: a quarter of the context, or all the tokens asked for if fewer
        self.check_prompt(prompt, room=max(1, min(max_new_tokens, self.block_size // 4)))
        ids = self.template.ids
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        cache, length = self.model.new_cache(), 0

        def forward(tokens: list[int]) -> torch.Tensor:
            nonlocal length
            x = torch.tensor([tokens], device=self.device)
            with self.autocast():
                logits = self.model(x, cache=cache, start=length, last=1)
            length += len(tokens)
            return logits[:, -1].float()

        logits = forward(prompt)
        in_tool, pending, sent = False, [], ""
        for _ in range(max_new_tokens):
            token = int(sample_next(logits, temperature, top_k, top_p, generator))
            feed = [token]
            if token == ids[TOOL_START] and not in_tool:
                in_tool, pending, sent = True, [], ""
            elif token == ids[TOOL_END] and in_tool:
                expression = self.tok.decode(pending)
                result = run_calculator(expression)
                yield Event("tool_call", expression)
                yield Event("tool_output", result)
                feed += [ids[OUTPUT_START], *self.tok.encode(result), ids[OUTPUT_END]]
                in_tool, pending = False, []
            elif token in self.special:  # the end of the turn, or a token that only a turn boundary may hold
                yield Event("end", "end")
                return
            else:
                pending.append(token)
                if not in_tool:
                    text = self.tok.decode(pending)
                    if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                        yield Event("text", text[len(sent):])
                        sent = text
            if length + len(feed) > self.block_size:
                yield Event("end", "context")
                return
            logits = forward(feed)
        yield Event("end", "max_tokens")

    def reply(self, messages: list[dict], **options) -> dict:
        """The whole assistant message, its content as parts (text, tool_call, tool_output)."""
        return assistant_message(self.stream(messages, **options))


def assistant_message(events) -> dict:
    """The assistant message a stream of Events spells, its text pieces joined into parts.
    Callers that show the events as they come (the terminal chat) pass them through here too."""
    content: list[dict] = []
    for event in events:
        if event.kind == "end":
            break
        if event.kind == "text" and content and content[-1]["type"] == "text":
            content[-1]["text"] += event.text
        else:
            content.append({"type": event.kind, "text": event.text})
    return {"role": "assistant", "content": content}


def display(kind: str, text: str) -> str:
    """A part of a reply as a reader sees it: tool calls shown as [calc: 1+2 = 3]."""
    if kind == "tool_call":
        return f"[calc: {text}"
    if kind == "tool_output":
        return f" = {text}]"
    return text


def as_plain_text(content) -> str:
    """A whole reply for display (see `display`)."""
    return "".join(display(part["type"], part["text"]) for part in parts(content))


def chat_run_dir(path) -> Path:
    """The run to chat with: a run directory, or a chat pipeline's folder (its
    fine-tuned model, or the base model if fine-tuning has not finished)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path} does not exist; pass the folder `speedrun train` or `speedrun chat-pipeline` "
                          "printed")
    trained = ChatRunDir(path).trained_run()
    if trained is not None:
        return trained.path
    if not RunDir(path).has_checkpoint():
        raise ConfigError(f"{path} holds no trained model (checkpoints/last.safetensors); pass a chat "
                          "pipeline's --out folder or a run directory")
    return path
