import pytest
from chat_engines import ScriptedEngine, talkative_engine

import speedrun.loading as loading_module
from speedrun.apps.chat_cli import answer, chat_loop
from speedrun.chat.engine import PromptTooLong, as_plain_text
from speedrun.loading import load_engine
from speedrun.cli import main

GREEDY = {"temperature": 0.0, "max_new_tokens": 12}


class Terminal:
    """A stdout that keeps what was written between flushes, and a keyboard typing `lines`."""

    def __init__(self, lines):
        self.lines, self.flushed, self.pending = list(lines), [], ""

    def write(self, text):
        self.pending += text

    def flush(self):
        self.flushed.append(self.pending)
        self.pending = ""

    def read(self, prompt):
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)

    def text(self):
        return "".join(self.flushed) + self.pending


def user(text):
    return {"role": "user", "content": text}


@pytest.fixture(scope="module")
def talkative(chat_run):
    return talkative_engine(chat_run)


def test_answer_is_written_piece_by_piece(talkative):
    term = Terminal(["What is 2 plus 3?"])
    chat_loop(talkative, out=term, read=term.read, **GREEDY)
    reply = as_plain_text(talkative.reply([user("What is 2 plus 3?")], **GREEDY)["content"])
    assert reply and reply in term.text()
    pieces = [p for p in term.flushed if p and p.strip()]
    assert len(pieces) >= 5  # each token flushed as it came, not the whole answer at the end
    assert "".join(term.flushed).count(reply) == 1


def test_tool_calls_shown_inline(chat_run):
    term = Terminal(["What is 482 plus 137?"])
    chat_loop(ScriptedEngine(load_engine(chat_run)), out=term, read=term.read)
    assert "Let me add. [calc: 482+137 = 619] It is 619.\n" in term.text()


def test_clear_and_quit(chat_run):
    engine = ScriptedEngine(load_engine(chat_run))
    term = Terminal(["hi", "again", "/clear", "fresh", "/quit", "never read"])
    chat_loop(engine, system="Be brief.", out=term, read=term.read)
    system = {"role": "system", "content": "Be brief."}
    assert [[m["role"] for m in sent] for sent in engine.received] == [
        ["system", "user"], ["system", "user", "assistant", "user"], ["system", "user"]]
    assert engine.received[2] == [system, user("fresh")]
    assert engine.received[1][2]["content"][1] == {"type": "tool_call", "text": "482+137"}
    assert term.lines == ["never read"]


def test_long_conversation_drops_oldest_turns(talkative):
    """The model reads 96 tokens: a few 12-token answers fill it, and the chat goes on."""
    term = Terminal([f"Tell me about number {i}, please." for i in range(6)])
    chat_loop(talkative, system="Be brief.", out=term, read=term.read, **GREEDY)
    assert "dropped the oldest turn" in term.text()
    assert "error" not in term.text()
    assert term.text().count(" [stopped") == 6  # every message answered, to the token limit or a full context

    system = {"role": "system", "content": "Be brief."}
    turn = [user("Tell me more."), {"role": "assistant", "content": "x" * 40}]
    kept = answer(talkative, [system, *turn * 3, user("Last one.")], Terminal([]), **GREEDY)
    assert kept[0] == system and kept[-2] == user("Last one.") and kept[-1]["role"] == "assistant"
    assert len(kept) < 9


def test_message_too_long_alone_is_refused_and_the_chat_goes_on(talkative):
    term = Terminal(["word " * 200, "short"])
    chat_loop(talkative, out=term, read=term.read, **GREEDY)
    assert "error: the conversation is" in term.text()
    assert term.text().count("[stopped at --max-new-tokens]") == 1
    with pytest.raises(PromptTooLong):
        answer(talkative, [user("word " * 200)], Terminal([]), **GREEDY)


def test_prompt_option_prints_one_answer(chat_run, talkative, monkeypatch, capsys):
    monkeypatch.setattr(loading_module, "load_engine", lambda path, device: talkative)
    assert main(["chat", str(chat_run), "-p", "What is 2 plus 3?", "--temperature", "0",
                 "--max-new-tokens", "12"]) == 0
    reply = as_plain_text(talkative.reply([user("What is 2 plus 3?")], **GREEDY)["content"])
    assert capsys.readouterr().out == reply + " [stopped at --max-new-tokens]\n"

    assert main(["chat", str(chat_run), "-p", "word " * 200]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the conversation is") and err.count("\n") == 1


def test_chat_with_a_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["chat", str(tmp_path / "nowhere"), "-p", "hi"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
