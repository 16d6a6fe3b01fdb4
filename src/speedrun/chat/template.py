"""The chat template: one way to turn a conversation into tokens and a loss mask.

A conversation is a list of messages `{"role", "content"}`; an assistant's
content may be a list of parts (`text`, `tool_call`, `tool_output`). Each
message is wrapped in its role's special tokens, so no text a user types can
open or close a turn. The mask marks the tokens the model is trained to
produce: the assistant's words, its tool calls and the token ending its turn.
Everything else is context: the system and user turns, and the calculator's
output, which the engine inserts rather than the model writing it.
"""

from __future__ import annotations

BOS = "<|bos|>"
SYSTEM_START, SYSTEM_END = "<|system_start|>", "<|system_end|>"
USER_START, USER_END = "<|user_start|>", "<|user_end|>"
ASSISTANT_START, ASSISTANT_END = "<|assistant_start|>", "<|assistant_end|>"
TOOL_START, TOOL_END = "<|tool_start|>", "<|tool_end|>"
OUTPUT_START, OUTPUT_END = "<|output_start|>", "<|output_end|>"
CHAT_SPECIAL_TOKENS = [BOS, SYSTEM_START, SYSTEM_END, USER_START, USER_END, ASSISTANT_START, ASSISTANT_END,
                       TOOL_START, TOOL_END, OUTPUT_START, OUTPUT_END]

ROLE_TOKENS = {"system": (SYSTEM_START, SYSTEM_END), "user": (USER_START, USER_END)}


class TemplateError(ValueError):
    """A conversation the template cannot render."""


def parts(content) -> list[dict]:
    """An assistant's content as a list of parts (a plain string is one text part)."""
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def response_text(content) -> str:
    """The words of an assistant's content, without tool calls and outputs."""
    return "".join(p["text"] for p in parts(content) if p["type"] == "text")


class ChatTemplate:
    def __init__(self, tokenizer):
        missing = [t for t in CHAT_SPECIAL_TOKENS if t not in tokenizer.special_ids]
        if missing:
            raise TemplateError(f"the tokenizer lacks the chat tokens {', '.join(missing)}; "
                                "train it with the chat pipeline's tokenizer stage")
        self.tok = tokenizer
        self.ids = {t: tokenizer.token_id(t) for t in CHAT_SPECIAL_TOKENS}

    def render(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """Token ids of the whole conversation and a mask (1: the model should produce
        this token). mask[i] belongs to ids[i], so as a target of position i-1."""
        ids, mask = [self.ids[BOS]], [0]

        def add(tokens: list[int], train: int) -> None:
            ids.extend(tokens)
            mask.extend([train] * len(tokens))

        for i, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if role == "assistant":
                add([self.ids[ASSISTANT_START]], 0)
                for part in parts(content):
                    kind, text = part["type"], part["text"]
                    if kind == "text":
                        add(self.tok.encode(text), 1)
                    elif kind == "tool_call":
                        add([self.ids[TOOL_START], *self.tok.encode(text), self.ids[TOOL_END]], 1)
                    elif kind == "tool_output":
                        add([self.ids[OUTPUT_START], *self.tok.encode(text), self.ids[OUTPUT_END]], 0)
                    else:
                        raise TemplateError(f"message {i}: unknown part type {kind!r}; "
                                            "use text, tool_call or tool_output")
                add([self.ids[ASSISTANT_END]], 1)
            elif role in ROLE_TOKENS:
                if role == "system" and i != 0:
                    raise TemplateError(f"message {i}: a system message may only come first")
                start, end = ROLE_TOKENS[role]
                add([self.ids[start], *self.tok.encode(content), self.ids[end]], 0)
            else:
                raise TemplateError(f"message {i}: unknown role {role!r}; use system, user or assistant")
        return ids, mask

    def prompt(self, messages: list[dict]) -> list[int]:
        """The conversation so far, then the start of the assistant's turn to generate."""
        if messages and messages[-1]["role"] == "assistant":
            raise TemplateError("the conversation already ends with an assistant message; add a user message")
        return self.render(messages)[0] + [self.ids[ASSISTANT_START]]


def train_chat_tokenizer(texts, vocab_size: int, progress: bool = False):
    """Byte-level BPE with the chat tokens, one token per digit (see BPETokenizer.train)."""
    from ..tokenizer import BPETokenizer

    return BPETokenizer.train(texts, vocab_size, CHAT_SPECIAL_TOKENS, progress=progress, split_digits=True)
