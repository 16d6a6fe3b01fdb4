"""The user's own conversations, read from JSONL and checked line by line before training starts."""

from __future__ import annotations

from pathlib import Path

from ..data import DataError, jsonl_records
from ..data.sources import dataset_rows


class ChatDataError(DataError):
    """A conversations file the user can fix."""


ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "tool_call", "tool_output")


def load_conversations(path, split: str = "train") -> list[list[dict]]:
    """Conversations from JSONL (one {"messages": [...]} object, or a bare list of messages,
    per line), or from the "messages" column of a hub dataset (hf:NAME, e.g.
    hf:HuggingFaceTB/smol-smoltalk) or of a folder saved with `save_to_disk`. Every
    conversation is checked, so training never meets a bad one."""
    try:
        rows = dataset_rows(str(path), "messages", split)
    except DataError as e:
        raise ChatDataError(str(e)) from None
    if rows is not None:
        conversations = []
        for n, messages in enumerate(rows, 1):
            problem = _conversation_problem(messages)
            if problem:
                raise ChatDataError(f"{path} row {n}: {problem}")
            conversations.append(messages)
        if not conversations:
            raise ChatDataError(f"{path} has no conversations in its {split!r} split")
        return conversations
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ChatDataError(f"cannot read conversations from {path} ({e}); give a UTF-8 JSONL file, "
                            f"hf:NAME or a saved dataset folder") from None
    conversations = []
    for n, record in jsonl_records(text, path, '{"messages": [...]}', ChatDataError):
        problem = _conversation_problem(record)
        if problem:
            raise ChatDataError(f"{path} line {n}: {problem}")
        conversations.append(record["messages"] if isinstance(record, dict) else record)
    if not conversations:
        raise ChatDataError(f"{path} has no conversations; "
                            'write one per line like {"messages": [{"role": "user", "content": "Hi"}, ...]}')
    return conversations


def _conversation_problem(record) -> str | None:
    """What is wrong with one line's conversation, and how to fix it; None if nothing."""
    messages = record.get("messages") if isinstance(record, dict) else record
    if not isinstance(messages, list):
        return 'expected an object with a "messages" list, or a list of messages'
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return f'message {i} is not an object with "role" and "content"'
        role, content = message["role"], message["content"]
        if role not in ROLES:
            return f"message {i} has role {role!r}; use system, user or assistant"
        if role == "system" and i != 0:
            return f"message {i} is a system message; a system message may only come first"
        if isinstance(content, list) and role == "assistant":
            for part in content:
                if not (isinstance(part, dict) and part.get("type") in PART_TYPES
                        and isinstance(part.get("text"), str)):
                    return (f"message {i} has a bad part {part!r}; "
                            'a part is {"type": "text", "tool_call" or "tool_output", "text": "..."}')
        elif not isinstance(content, str):
            return (f"message {i} content is a {type(content).__name__}; use a string "
                    "(or, for the assistant, a list of parts)")
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message; a conversation needs at least one assistant reply to learn from"
    return None
