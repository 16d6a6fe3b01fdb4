"""`speedrun serve`: a chat model behind one web page and a small HTTP API.

The browser keeps the conversation and sends it whole with each message, so
the server holds no per-conversation state and two conversations cannot mix.
Answers stream back as server-sent events, one JSON object per engine event.
One model serves every request: a lock around each step of an answer's
generation makes concurrent conversations take turns token by token, rather
than running two forward passes at once on a few CPU cores.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Literal

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, model_validator

from ..chat.engine import CHAT_TEMPERATURE, CHAT_TOP_K, Engine, PromptTooLong
from ..chat.template import TemplateError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
PAGE = Path(__file__).parent / "static" / "index.html"


class Part(BaseModel):
    type: Literal["text", "tool_call", "tool_output"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[Part]

    @model_validator(mode="after")
    def check_content(self):
        if self.role != "assistant" and not isinstance(self.content, str):
            raise ValueError(f"a {self.role} message's content is a string; only an assistant's has parts")
        if isinstance(self.content, str) and not self.content.strip():
            raise ValueError(f"a {self.role} message is empty; write something")
        return self


class ChatRequest(BaseModel):
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(CHAT_TEMPERATURE, ge=0, le=2)
    top_k: int = Field(CHAT_TOP_K, ge=0)
    max_new_tokens: int | None = Field(None, ge=1)  # None: the server's limit


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def prompt_chars(messages: list[Message]) -> int:
    return sum(len(m.content) if isinstance(m.content, str) else sum(len(p.text) for p in m.content)
               for m in messages)


def sse(event) -> str:
    return f"data: {json.dumps({'kind': event.kind, 'text': event.text})}\n\n"


def create_app(engine: Engine, name: str = "model", max_prompt_chars: int = 8000, max_new_tokens: int = 256,
               max_messages: int = 200) -> FastAPI:
    # No /docs: its page loads scripts from a CDN, and the API is three routes.
    app = FastAPI(title="speedrun chat", docs_url=None, redoc_url=None, openapi_url=None)
    page = PAGE.read_text(encoding="utf-8")
    lock = threading.Lock()
    limits = {"max_prompt_chars": max_prompt_chars, "max_new_tokens": max_new_tokens, "max_messages": max_messages}

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError) -> JSONResponse:
        worst = max(exc.errors(), key=lambda e: len(e["loc"]))  # the deepest is the most specific
        where = ".".join(str(x) for x in worst["loc"] if x != "body")
        message = worst["msg"].removeprefix("Value error, ")
        return error(422, f"{where}: {message}" if where else message)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": name, "parameters": engine.model.num_params(),
                "context_tokens": engine.block_size, "limits": limits}

    @app.post("/chat")
    def chat(request: ChatRequest):
        if len(request.messages) > max_messages:
            return error(413, f"the conversation has {len(request.messages)} messages and this server takes "
                              f"at most {max_messages}; start a new conversation")
        chars = prompt_chars(request.messages)
        if chars > max_prompt_chars:
            return error(413, f"the conversation is {chars} characters and this server takes at most "
                              f"{max_prompt_chars}; start a new conversation or send a shorter message")
        if (request.max_new_tokens or 0) > max_new_tokens:
            return error(400, f"max_new_tokens is at most {max_new_tokens} on this server")
        events = engine.stream([m.model_dump() for m in request.messages],
                               max_new_tokens=request.max_new_tokens or max_new_tokens,
                               temperature=request.temperature, top_k=request.top_k)
        try:  # the first step reads the prompt: a conversation the model cannot take fails here, as a 400
            with lock:
                first = next(events)
        except (PromptTooLong, TemplateError) as e:
            return error(400, str(e))

        def stream():
            event = first
            while event is not None:
                yield sse(event)
                with lock:
                    event = next(events, None)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    """Run the app with uvicorn until Ctrl-C; `options` go to create_app."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(create_app(engine, **options), host=host, port=port)).run()
