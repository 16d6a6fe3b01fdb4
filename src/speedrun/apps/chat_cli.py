"""`speedrun chat`: a conversation with a chat model in the terminal.

Each answer is written and flushed piece by piece as the engine produces it,
so a slow model still shows it is working, and tool calls appear inline as
`[calc: 482+137 = 619]`. A small model's context fills after a few turns: then
the oldest turns are dropped (the system message stays) and the chat goes on,
rather than ending on an error.
"""

from __future__ import annotations

import sys

from ..chat.engine import Engine, PromptTooLong, assistant_message, display

HELP = "type a message; /clear starts a new conversation, /quit (or Ctrl-D) leaves"
STOP_NOTES = {"max_tokens": " [stopped at --max-new-tokens]", "context": " [stopped: the model's context is full]"}


def echo(events, out):
    """Pass the engine's events through, writing each to `out` as it arrives."""
    for event in events:
        if event.kind == "end":
            out.write(STOP_NOTES.get(event.text, "") + "\n")
        else:
            out.write(display(event.kind, event.text))
        out.flush()
        yield event


def drop_oldest_turn(messages: list[dict]) -> list[dict]:
    """The conversation without its oldest user message and the reply to it; a system message stays."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    end = start + 1
    while end < len(messages) and messages[end]["role"] != "user":
        end += 1
    return messages[:start] + messages[end:]


def answer(engine: Engine, messages: list[dict], out, **options) -> list[dict]:
    """The conversation with the assistant's reply, streamed to `out`. Old turns are dropped while
    the conversation is too long for the model; PromptTooLong if its last message alone is."""
    while True:
        try:
            return messages + [assistant_message(echo(engine.stream(messages, **options), out))]
        except PromptTooLong:
            if sum(m["role"] == "user" for m in messages) == 1:
                raise
            messages = drop_oldest_turn(messages)
            out.write(f"(the conversation outgrew the model's {engine.block_size}-token context: "
                      "dropped the oldest turn)\n")


def conversation(system: str | None) -> list[dict]:
    return [{"role": "system", "content": system}] if system else []


def chat_loop(engine: Engine, system: str | None = None, out=sys.stdout, read=input, **options) -> None:
    """Answer messages read with `read` until /quit, end of input or Ctrl-C."""
    messages = conversation(system)
    out.write(HELP + "\n")
    try:
        while True:
            text = read("> ").strip()
            if text == "/quit":
                return
            if text == "/clear":
                messages = conversation(system)
                out.write("(new conversation)\n")
            elif text:
                try:
                    messages = answer(engine, messages + [{"role": "user", "content": text}], out, **options)
                except PromptTooLong as e:
                    out.write(f"error: {e}\n")
    except (EOFError, KeyboardInterrupt):
        out.write("\n")
