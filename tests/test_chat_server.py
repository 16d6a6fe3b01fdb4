import json

import pytest
from chat_engines import ScriptedEngine, talkative_engine
from fastapi.testclient import TestClient

from speedrun.loading import load_engine
from speedrun.apps.server import create_app
from speedrun.cli import build_parser, main


def user(text):
    return {"role": "user", "content": text}


def events(response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return [json.loads(line[len("data: "):]) for line in response.text.split("\n\n") if line]


@pytest.fixture(scope="module")
def talkative(chat_run):
    return talkative_engine(chat_run)


@pytest.fixture(scope="module")
def client(talkative):
    return TestClient(create_app(talkative, name="tiny", max_prompt_chars=200, max_new_tokens=16, max_messages=5))


def test_health_and_page(client, talkative):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny"
    assert health["parameters"] == talkative.model.num_params() and health["context_tokens"] == 96
    assert health["limits"] == {"max_prompt_chars": 200, "max_new_tokens": 16, "max_messages": 5}
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert all(f'id="{i}"' in page.text for i in ("messages", "input", "send", "new", "system", "temperature"))
    assert "http" not in page.text.split("<script>")[1]  # nothing fetched from elsewhere


def test_chat_streams_the_engines_events(client, talkative):
    conversation = [user("What is 2 plus 3?")]
    got = events(client.post("/chat", json={"messages": conversation, "temperature": 0, "max_new_tokens": 10}))
    want = [{"kind": e.kind, "text": e.text}
            for e in talkative.stream(conversation, temperature=0, max_new_tokens=10)]
    assert got == want and len(got) == 11 and got[-1] == {"kind": "end", "text": "max_tokens"}
    default = events(client.post("/chat", json={"messages": conversation, "temperature": 0}))
    assert len(default) == 16 + 1  # the server's limit is the default length


def test_tool_calls_and_assistant_parts(chat_run):
    engine = ScriptedEngine(load_engine(chat_run))
    client = TestClient(create_app(engine))
    first = [{"role": "system", "content": "Be brief."}, user("What is 482 plus 137?")]
    got = events(client.post("/chat", json={"messages": first}))
    assert [e["kind"] for e in got] == ["text", "tool_call", "tool_output", "text", "text", "end"]
    reply = {"role": "assistant", "content": [{"type": "text", "text": "Let me add. "},
                                              {"type": "tool_call", "text": "482+137"},
                                              {"type": "tool_output", "text": "619"},
                                              {"type": "text", "text": " It is 619."}]}
    events(client.post("/chat", json={"messages": [*first, reply, user("Thanks")]}))
    assert engine.received == [first, [*first, reply, user("Thanks")]]


@pytest.mark.parametrize("body, status, words", [
    ({"messages": [user("x" * 201)]}, 413, "201 characters"),
    ({"messages": [user("hi"), {"role": "assistant", "content": "yo"}] * 2 + [user("hi")] * 2}, 413, "6 messages"),
    ({"messages": [user("hi")], "max_new_tokens": 17}, 400, "max_new_tokens is at most 16"),
    ({"messages": [{"role": "tool", "content": "hi"}]}, 422, "messages.0.role"),
    ({"messages": [user("  ")]}, 422, "message is empty"),
    ({"messages": []}, 422, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, 422, "content is a string"),
    ({"messages": [user("hi")], "temperature": -1}, 422, "temperature"),
    ({"messages": [user("hi"), {"role": "assistant", "content": "yo"}]}, 400, "add a user message"),
    ({"messages": [user("hi"), {"role": "system", "content": "late"}, user("hi")]}, 400, "only come first"),
    ({"messages": [user("7" * 150)]}, 400, "the model reads at most 96"),  # a token per digit
])
def test_bad_requests_get_a_clear_error(client, body, status, words):
    response = client.post("/chat", json=body)
    assert response.status_code == status
    assert words in response.json()["error"]


def test_serve_listens_on_this_machine_only_by_default(chat_run, monkeypatch, capsys):
    import uvicorn

    hosts = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: hosts.append((self.config.host, self.config.port)))
    assert build_parser().parse_args(["serve", str(chat_run)]).host == "127.0.0.1"
    assert main(["serve", str(chat_run)]) == 0
    assert hosts == [("127.0.0.1", 8000)] and "warning" not in capsys.readouterr().err
    assert main(["serve", str(chat_run), "--host", "0.0.0.0", "--port", "9000"]) == 0
    assert hosts[-1] == ("0.0.0.0", 9000)
    assert "warning: serving on 0.0.0.0: anyone who can reach" in capsys.readouterr().err
