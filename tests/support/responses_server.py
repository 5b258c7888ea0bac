"""A scripted OpenAI Responses API on 127.0.0.1, for driving the real ``codex`` CLI.

``codex exec`` calls ``POST <base_url>/responses`` with ``"stream": true`` and reads the SSE
events ``response.created``, ``response.output_item.added`` / ``.done`` (a ``message`` or a
``function_call``), ``response.output_text.delta`` and ``response.completed`` (with the
usage). What the "model" answers is a *script*: a function from the
:class:`ResponsesRequest` to a :data:`Reply`. The default script follows the prompt's
keywords (``FAIL401``, ``FAIL500``, ``HANG``, ``TEXTONLY``, ``PERLSLEEP=<seconds>``,
else an ``exec_command`` call that writes ``hello.txt``) and answers ``done`` after a tool's output
(``ack: <prompt>`` when the conversation already holds an earlier turn).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.support.scripted_http import Exchange, ScriptedServer

#: A model name the CLI has no metadata for: it then reports a warning item, not a failure.
MODEL = "fake-model"
INPUT_TOKENS = 100
OUTPUT_TOKENS = 10
CACHED_TOKENS = 20


@dataclass(frozen=True)
class Text:
    """Answer with an assistant message."""

    text: str


@dataclass(frozen=True)
class Call:
    """Answer with one function call."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    """Answer with an HTTP error and an OpenAI-style error body."""

    status: int
    message: str


@dataclass(frozen=True)
class Hang:
    """Start the stream, then send only keep-alives for ``seconds``."""

    seconds: float = 120.0


Reply = Text | Call | Failure | Hang


@dataclass(frozen=True)
class ResponsesRequest:
    """One ``POST /responses`` as the server saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def items(self) -> list[dict[str, Any]]:
        """The ``input`` items of the conversation."""
        items = self.body.get("input")
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    @property
    def after_tool(self) -> bool:
        """True when the last input item is a tool's output."""
        return bool(self.items) and str(self.items[-1].get("type", "")).endswith("_output")

    def user_texts(self) -> list[str]:
        """The text of each user message, in order."""
        out = []
        for item in self.items:
            if item.get("role") != "user":
                continue
            content = item.get("content")
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                out.append(" ".join(str(p.get("text", "")) for p in content if isinstance(p, dict)))
        return out

    @property
    def prompt(self) -> str:
        """The last user message's text."""
        texts = self.user_texts()
        return texts[-1] if texts else ""


_SLEEP = re.compile(r"PERLSLEEP=([0-9.]+)")


def default_script(request: ResponsesRequest) -> Reply:  # noqa: PLR0911 - one branch a keyword
    """The keyword script of the module docstring."""
    prompt = request.prompt
    if request.after_tool:
        return Text("done")
    if "FAIL401" in prompt:
        return Failure(401, "Incorrect API key provided (scripted 401)")
    if "FAIL500" in prompt:
        return Failure(500, "The server had an error (scripted 500)")
    if "HANG" in prompt:
        return Hang()
    if "TEXTONLY" in prompt:
        return Text("plain answer")
    if sleeper := _SLEEP.search(prompt):
        return shell(f"perl -e 'sleep {sleeper.group(1)}' && echo slept > slept.txt")
    if any(item.get("type") == "function_call" for item in request.items):
        return Text(f"ack: {prompt}")  # a resumed thread: the earlier turn came along
    return shell("printf 'hello from the fake API\\n' > hello.txt")


def shell(command: str) -> Call:
    """A call of codex's ``exec_command`` tool (0.171) running ``command``, waiting for it
    as long as the tool allows (30 s) before it reports the command as still running."""
    return Call("exec_command", {"cmd": command, "tty": False, "yield_time_ms": 30_000})


class ResponsesServer(ScriptedServer[ResponsesRequest, Reply]):
    """The server; ``with ResponsesServer() as api:`` starts and stops it."""

    def __init__(self, script: Any = default_script) -> None:
        super().__init__(script)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``, the provider's ``base_url``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def handle(self, exchange: Exchange) -> None:
        """Answer ``POST /v1/responses`` as the script says."""
        request = ResponsesRequest(exchange.path, exchange.headers, exchange.body)
        self.record(request)
        if not exchange.path.split("?")[0].rstrip("/").endswith("/responses"):
            exchange.json(404, {"error": {"message": f"no route {exchange.path}"}})
            return
        reply = self.script(request)
        if isinstance(reply, Failure):
            kind = "server_error" if reply.status >= 500 else "invalid_request_error"
            error = {"message": reply.message, "type": kind, "code": None, "param": None}
            exchange.json(reply.status, {"error": error})
            return
        rid = f"resp_{uuid.uuid4().hex[:16]}"
        exchange.start_sse()
        base = {"id": rid, "object": "response", "model": MODEL, "status": "in_progress"}
        exchange.sse({"type": "response.created", "response": base}, "response.created")
        if isinstance(reply, Hang):
            exchange.hang(reply.seconds)
            return
        item = _item(reply)
        added = {"type": "response.output_item.added", "output_index": 0, "item": item}
        exchange.sse(added, str(added["type"]))
        if isinstance(reply, Text):
            delta = {
                "type": "response.output_text.delta",
                "item_id": item["id"],
                "output_index": 0,
                "content_index": 0,
                "delta": reply.text,
            }
            exchange.sse(delta, str(delta["type"]))
        done = {"type": "response.output_item.done", "output_index": 0, "item": item}
        exchange.sse(done, str(done["type"]))
        usage = {
            "input_tokens": INPUT_TOKENS,
            "input_tokens_details": {"cached_tokens": CACHED_TOKENS},
            "output_tokens": OUTPUT_TOKENS,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
        }
        completed = {**base, "status": "completed", "output": [item], "usage": usage}
        exchange.sse({"type": "response.completed", "response": completed}, "response.completed")


def _item(reply: Text | Call) -> dict[str, Any]:
    if isinstance(reply, Text):
        return {
            "type": "message",
            "id": f"msg_{uuid.uuid4().hex[:12]}",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": reply.text, "annotations": []}],
        }
    return {
        "type": "function_call",
        "id": f"fc_{uuid.uuid4().hex[:12]}",
        "call_id": f"call_{uuid.uuid4().hex[:12]}",
        "name": reply.name,
        "arguments": json.dumps(reply.arguments),
        "status": "completed",
    }
