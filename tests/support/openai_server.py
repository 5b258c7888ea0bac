"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for the OpenCode tests.

OpenCode talks to it as a custom provider (``@ai-sdk/openai-compatible``, built into the
binary, so nothing is downloaded): see :meth:`ScriptedOpenAI.opencode_config`. Every request
is recorded; what the server answers is decided by a *script*, a function from the request
to a :class:`Reply`. The default script follows the prompt's keywords (``TEXTONLY``,
``FAIL401``, ``FAIL500``, ``HANG``, ``BASHSLEEP=<seconds>:<marker file>``, else a ``write``
tool call), as in the reference notes; a test swaps it with :attr:`ScriptedOpenAI.script`.

The server runs in its own threads (``ThreadingHTTPServer``), so it keeps answering while a
test's event loop is busy, and a script may block (e.g. to cut a proxy) without stalling the
loop. :meth:`stop` closes it and every hanging stream.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

MODEL = "fake-model"
PROVIDER = "fake"


@dataclass(frozen=True)
class Reply:
    """What the server answers to one chat-completions request.

    Exactly one of: ``text`` (streamed in ``chunks`` pieces), ``tool`` (one tool call with
    ``arguments``), ``status`` (an HTTP error with an OpenAI-style body), or ``hang`` (one
    text chunk, then keep-alive comments until the client goes away or ``hang_s`` passes).
    """

    text: str | None = None
    chunks: int = 2
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    status: int | None = None
    message: str = ""
    hang: bool = False
    hang_s: float = 120.0
    prompt_tokens: int = 100
    completion_tokens: int = 10


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def last_role(self) -> str | None:
        """Role of the last message of the conversation."""
        messages = self.body.get("messages") or []
        return messages[-1].get("role") if messages else None

    @property
    def user_text(self) -> str:
        """The text of the last user message (string or parts)."""
        for message in reversed(self.body.get("messages") or []):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
        return ""

    @property
    def is_title_request(self) -> bool:
        """True for opencode's title/summary side request (no tools, generator prompt)."""
        if self.body.get("tools"):
            return False
        system = " ".join(
            str(m.get("content"))
            for m in self.body.get("messages") or []
            if m.get("role") == "system"
        )
        return "title" in system.lower() or "summar" in system.lower()


Script = Callable[[RecordedRequest], Reply]

_PATH = re.compile(r"PATH=(\S+)")
_SLEEP = re.compile(r"BASHSLEEP=([0-9.]+):(\S+)")


def default_script(request: RecordedRequest) -> Reply:  # noqa: PLR0911 - one branch per keyword
    """The keyword script of the reference notes."""
    if request.is_title_request:
        return Reply(text="Probe title")
    if request.last_role == "tool":
        return Reply(text="done")
    prompt = request.user_text
    if "FAIL401" in prompt:
        return Reply(status=401, message="Incorrect API key provided (fake 401)")
    if "FAIL500" in prompt:
        return Reply(status=500, message="The server had an error (fake 500)")
    if "HANG" in prompt:
        return Reply(hang=True, text="thinking")
    if "TEXTONLY" in prompt:
        return Reply(text="plain answer from fake model", chunks=3)
    if sleeper := _SLEEP.search(prompt):
        seconds, marker = sleeper.groups()
        command = f"sleep {seconds} && echo slept > {marker}"
        return Reply(tool="bash", arguments={"command": command, "description": "sleep"})
    target = _PATH.search(prompt)
    return Reply(
        tool="write",
        arguments={
            "filePath": target.group(1) if target else "hello.txt",
            "content": "hello from fake model\n",
        },
    )


def qwen_script(request: RecordedRequest) -> Reply:  # noqa: PLR0911 - one branch a keyword
    """The keywords of :func:`tests.support.responses_server.default_script` in Qwen Code's
    tools (``run_shell_command``); ``ack: <prompt>`` once the conversation holds an earlier
    tool call (a resumed session)."""
    if request.last_role == "tool":
        return Reply(text="done")
    prompt = request.user_text
    if "FAIL401" in prompt:
        return Reply(status=401, message="Incorrect API key provided (scripted 401)")
    if "FAIL500" in prompt:
        return Reply(status=500, message="The server had an error (scripted 500)")
    if "HANG" in prompt:
        return Reply(hang=True, text="thinking")
    if sleeper := re.search(r"PERLSLEEP=([0-9.]+)", prompt):
        command = f"perl -e 'sleep {sleeper.group(1)}' && echo slept > slept.txt"
        return Reply(tool="run_shell_command", arguments={"command": command})
    if any(m.get("tool_calls") for m in request.body.get("messages") or []):
        return Reply(text=f"ack: {prompt}")
    command = "printf 'hello from the fake API\\n' > hello.txt"
    return Reply(tool="run_shell_command", arguments={"command": command})


class ScriptedOpenAI:
    """The server: start with :meth:`start` (or the ``scripted_openai`` fixture)."""

    def __init__(self) -> None:
        self.script: Script = default_script
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self.disconnects = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> ScriptedOpenAI:
        """Listen on a free loopback port, in a daemon thread."""
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="scripted-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release hanging streams."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def opencode_config(self, **extra: Any) -> dict[str, Any]:
        """An opencode configuration naming this server as provider ``fake``."""
        return {
            "$schema": "https://opencode.ai/config.json",
            "provider": {
                PROVIDER: {
                    "npm": "@ai-sdk/openai-compatible",
                    "name": "Scripted OpenAI-compatible (loopback)",
                    "options": {"baseURL": self.base_url, "apiKey": "sk-scripted"},
                    "models": {MODEL: {"name": "Fake Model", "tool_call": True}},
                }
            },
            "model": f"{PROVIDER}/{MODEL}",
            "small_model": f"{PROVIDER}/{MODEL}",
            "autoupdate": False,
            "share": "disabled",
            **extra,
        }

    # --- what happened ---------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every chat-completions request so far."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Forget recorded requests and restore the default script."""
        with self._lock:
            self._requests.clear()
        self.script = default_script

    @contextmanager
    def scripted(self, script: Script) -> Iterator[None]:
        """Use ``script`` inside the block."""
        self.script = script
        try:
            yield
        finally:
            self.script = default_script

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    server_owner: ScriptedOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: pytest captures nothing useful from access logs."""

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        body = json.loads(raw or b"{}")
        request = RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        owner = self.server_owner
        owner._record(request)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"message": "not found"}})
            return
        reply = owner.script(request)
        if reply.status is not None:
            kind = "server_error" if reply.status >= 500 else "invalid_request_error"
            self._json(reply.status, {"error": {"message": reply.message, "type": kind}})
            return
        if not body.get("stream"):
            self._json(200, _completion(reply))
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for chunk in _stream_chunks(reply):
                self._send(f"data: {json.dumps(chunk)}\n\n")
            if reply.hang:
                deadline = time.monotonic() + reply.hang_s
                while time.monotonic() < deadline and not owner._stopping.is_set():
                    self._send(": keep-alive\n\n")
                    owner._stopping.wait(0.2)
                return
            self._send("data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            owner.disconnects += 1

    def _send(self, text: str) -> None:
        self.wfile.write(text.encode())
        self.wfile.flush()

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _base(cid: str) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL,
    }


def _stream_chunks(reply: Reply) -> Iterator[dict[str, Any]]:
    cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
    yield {**_base(cid), "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    if reply.tool is not None:
        call = {
            "index": 0,
            "id": f"call_{uuid.uuid4().hex[:8]}",
            "type": "function",
            "function": {"name": reply.tool, "arguments": ""},
        }
        yield {**_base(cid), "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}
        args = json.dumps(reply.arguments)
        half = len(args) // 2
        for piece in (args[:half], args[half:]):
            delta: dict[str, Any] = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            yield {**_base(cid), "choices": [{"index": 0, "delta": delta}]}
        finish = "tool_calls"
    else:
        text = reply.text or ""
        size = max(1, -(-len(text) // max(1, reply.chunks)))
        for start in range(0, len(text), size):
            delta = {"content": text[start : start + size]}
            yield {**_base(cid), "choices": [{"index": 0, "delta": delta}]}
        if reply.hang:
            return
        finish = "stop"
    yield {**_base(cid), "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
    usage = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
    yield {**_base(cid), "choices": [], "usage": usage}


def _completion(reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or ""}
    if reply.tool is not None:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:8]}",
                "type": "function",
                "function": {"name": reply.tool, "arguments": json.dumps(reply.arguments)},
            }
        ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if reply.tool else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        },
    }


def _fixture() -> Iterator[ScriptedOpenAI]:
    server = ScriptedOpenAI().start()
    try:
        yield server
    finally:
        server.stop()


#: Module-scoped pytest fixture: one scripted server per test module, stopped at its end.
#: Import it into a test module (``from tests.support.openai_server import scripted_openai``).
scripted_openai = pytest.fixture(scope="module", name="scripted_openai")(_fixture)
