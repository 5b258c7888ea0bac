"""A scripted Anthropic Messages API on 127.0.0.1, for driving the real ``claude`` CLI.

The server speaks what the CLI expects (``reference/claude-code-cli.md`` §3): it answers the
``HEAD /`` pre-connect, routes ``POST /v1/messages?beta=true`` on the path without the query
string, streams the Anthropic SSE sequence (``message_start``, ``content_block_start``,
``ping``, ``content_block_delta``…, ``content_block_stop``, ``message_delta``,
``message_stop``) with chunked transfer encoding for ``"stream": true`` requests, and plain
JSON for the CLI's non-streaming fallback.

What the "model" answers is a *script*: a function from the :class:`ApiRequest` received
(with the last user message, its tool results and the cwd parsed from the system prompt) to
a :data:`Reply` — a list of content blocks, an :class:`ApiError`, a :class:`Hang` or a
:class:`StallMidStream`. Every request is recorded in :attr:`AnthropicServer.requests`.

Typical use (the ``anthropic_server`` fixture builds one and stops it after the test)::

    def script(req: ApiRequest) -> Reply:
        if req.tool_results:
            return [text("done")]
        return [bash("env")]

    server = anthropic_server(script)
    env["ANTHROPIC_BASE_URL"] = server.url
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

# --- what a script returns ------------------------------------------------------------------


@dataclass(frozen=True)
class ApiError:
    """Answer with an HTTP error and the API's JSON error body."""

    status: int
    kind: str = ""
    message: str = ""

    def body(self) -> dict[str, Any]:
        """The JSON error document the real API sends."""
        kinds = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            429: "rate_limit_error",
            529: "overloaded_error",
        }
        kind = self.kind or kinds.get(self.status, "api_error")
        messages = {401: "invalid x-api-key", 529: "Overloaded"}
        message = self.message or messages.get(self.status, "Internal server error")
        return {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": _id("req"),
        }


@dataclass(frozen=True)
class Hang:
    """Never send a byte (no response headers) for ``seconds``, then drop the connection."""

    seconds: float = 120.0


@dataclass(frozen=True)
class StallMidStream:
    """Send headers, ``message_start`` and a text ``content_block_start``, then stall."""

    seconds: float = 120.0


Block = dict[str, Any]
Reply = list[Block] | ApiError | Hang | StallMidStream
Script = Callable[["ApiRequest"], Reply]


def text(value: str) -> Block:
    """A text content block."""
    return {"type": "text", "text": value}


def tool_use(name: str, tool_input: Mapping[str, Any]) -> Block:
    """A tool_use content block with a fresh id."""
    return {"type": "tool_use", "id": _id("toolu"), "name": name, "input": dict(tool_input)}


def bash(command: str, description: str = "run a command") -> Block:
    """A Bash tool call."""
    return tool_use("Bash", {"command": command, "description": description})


def write(file_path: str, content: str) -> Block:
    """A Write tool call (``file_path`` must be absolute)."""
    return tool_use("Write", {"file_path": file_path, "content": content})


# --- what a script sees ---------------------------------------------------------------------

_CWD_LINE = re.compile(r" - Primary working directory: (\S[^\n]*)")


@dataclass
class ApiRequest:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def stream(self) -> bool:
        """True for a streaming request (``"stream": true``)."""
        return bool(self.body.get("stream"))

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation sent."""
        messages: list[dict[str, Any]] = self.body.get("messages") or []
        return messages

    @property
    def has_tools(self) -> bool:
        """False for the CLI's side requests (e.g. a session title) that carry no tools."""
        return bool(self.body.get("tools"))

    @property
    def last_user(self) -> dict[str, Any]:
        """The last message with ``role: user`` (the CLI appends a ``system`` message after it)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return dict(message)
        return {}

    def _user_blocks(self) -> list[dict[str, Any]]:
        content = self.last_user.get("content")
        if isinstance(content, str):
            return [{"type": "text", "text": content}]
        return [b for b in content or [] if isinstance(b, dict)]

    @property
    def last_user_text(self) -> str:
        """The text of the last user message (its text blocks joined)."""
        return "\n".join(b.get("text", "") for b in self._user_blocks() if b.get("type") == "text")

    @property
    def prompt(self) -> str:
        """The user's prompt: the last text block that is not a ``<system-reminder>``."""
        texts = [
            b.get("text", "")
            for b in self._user_blocks()
            if b.get("type") == "text" and not b.get("text", "").startswith("<system-reminder>")
        ]
        return texts[-1] if texts else ""

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        """The ``tool_result`` blocks of the last user message."""
        return [b for b in self._user_blocks() if b.get("type") == "tool_result"]

    @property
    def system_text(self) -> str:
        """The system prompt as one string."""
        system = self.body.get("system")
        if isinstance(system, str):
            return system
        return "\n".join(b.get("text", "") for b in system or [] if isinstance(b, dict))

    @property
    def cwd(self) -> str | None:
        """The working directory the CLI announces in its system prompt."""
        match = _CWD_LINE.search(self.system_text)
        return match.group(1).strip() if match else None


# --- ready-made scripts ---------------------------------------------------------------------


def hello_script(req: ApiRequest) -> Reply:
    """The reference conversation: create ``hello.txt`` with Write, then say "done"."""
    if not req.has_tools:
        return [text("Probe session")]
    if req.tool_results:
        return [text("done")]
    if "hello.txt" in req.last_user_text:
        return [
            text("I'll create hello.txt."),
            write(f"{req.cwd}/hello.txt", "hello from the fake API\n"),
        ]
    return [text(f"ack: {len(req.messages)} messages seen; last prompt: {req.prompt}")]


def bash_then_done(command: str) -> Script:
    """Ask for one Bash ``command``; once its result is in, answer "done"."""

    def script(req: ApiRequest) -> Reply:
        if req.tool_results:
            return [text("done")]
        return [bash(command)]

    return script


def first_attempt_sleeps(sleep_arg: str) -> Script:
    """For kill drills: the first Bash run writes ``first`` to ``log.txt`` and sleeps
    ``sleep_arg`` seconds (then would write ``late``); every later run writes ``second`` at
    once. A commit's ``log.txt`` tells which attempt wrote it."""
    runs: list[None] = []
    lock = threading.Lock()

    def script(req: ApiRequest) -> Reply:
        if not req.has_tools:
            return [text("title")]
        if req.tool_results:
            return [text("done")]
        with lock:
            runs.append(None)
            first = len(runs) == 1
        if first:
            return [bash(f"echo first >> log.txt; sleep {sleep_arg}; echo late >> log.txt")]
        return [bash("echo second >> log.txt")]

    return script


def always(reply: Reply) -> Script:
    """Answer every request the same way (an error, a hang, the same blocks)."""
    return lambda _req: reply


# --- the server -----------------------------------------------------------------------------


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: AnthropicServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    # A keep-alive connection whose client vanished must not pin a thread forever.
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: the recorded requests are the log."""

    # HEAD / is the CLI's pre-connect; the real API answers it, so do we (200, empty).
    def do_HEAD(self) -> None:
        self.server.owner.record(ApiRequest("HEAD", self._path(), dict(self.headers)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        path = self._path()
        self.server.owner.record(ApiRequest("GET", path, dict(self.headers)))
        if path == "/v1/models":
            self._json(200, {"data": [{"type": "model", "id": "claude-opus-4-8"}]})
        else:
            self._json(404, ApiError(404, message=f"no route {path}").body())

    def do_POST(self) -> None:
        path = self._path()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = {}
        request = ApiRequest("POST", path, dict(self.headers), body)
        owner = self.server.owner
        owner.record(request)
        if path == "/v1/messages/count_tokens":
            self._json(200, {"input_tokens": 100})
            return
        if path != "/v1/messages":
            self._json(404, ApiError(404, message=f"no route {path}").body())
            return
        try:
            reply = owner.script(request)
        except Exception as exc:  # noqa: BLE001 - a broken script must show up as an API error
            reply = ApiError(500, message=f"script failed: {exc!r}")
        model = str(body.get("model") or "claude-opus-4-8")
        if isinstance(reply, ApiError):
            self._json(reply.status, reply.body())
        elif isinstance(reply, Hang):
            owner.stopping.wait(reply.seconds)
            self.close_connection = True
        elif request.stream:
            self._stream(model, reply)
        else:
            self._json(200, _message(model, _blocks(reply)), request_id=True)

    # -- helpers ---------------------------------------------------------------------------

    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def _json(self, status: int, payload: Mapping[str, Any], *, request_id: bool = False) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if request_id or status >= 400:
            self.send_header("request-id", _id("req"))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, name: str, payload: Mapping[str, Any]) -> None:
        self._chunk(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode())

    def _stream(self, model: str, reply: Reply) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", _id("req"))
        self.end_headers()
        start = _message(model, [])
        start["usage"] = {**start["usage"], "output_tokens": 1}
        start["stop_reason"] = None
        self._event("message_start", {"type": "message_start", "message": start})
        if isinstance(reply, StallMidStream):
            self._event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": text("")},
            )
            # Stall until told to stop; then drop the connection without message_stop.
            self.server.owner.stopping.wait(reply.seconds)
            self.close_connection = True
            return
        blocks = _blocks(reply)
        for index, block in enumerate(blocks):
            self._stream_block(index, block)
            if index == 0:
                self._event("ping", {"type": "ping"})
        self._event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop_reason(blocks), "stop_sequence": None},
                "usage": {"output_tokens": 20},
            },
        )
        self._event("message_stop", {"type": "message_stop"})
        self._chunk(b"")

    def _stream_block(self, index: int, block: Block) -> None:
        if block["type"] == "tool_use":
            opening = {**block, "input": {}}
            payload = json.dumps(block["input"])
            delta_type, key = "input_json_delta", "partial_json"
        else:
            opening = {**block, block["type"]: ""} if block["type"] == "text" else block
            payload = str(block.get("text", ""))
            delta_type, key = "text_delta", "text"
        self._event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opening},
        )
        # The real API sends small deltas; huge payloads (a 5 MB Write) go in larger pieces
        # so a test does not spend its time in framing.
        step = max(16, len(payload) // 64)
        for pos in range(0, len(payload), step):
            self._event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": delta_type, key: payload[pos : pos + step]},
                },
            )
        self._event("content_block_stop", {"type": "content_block_stop", "index": index})


def _blocks(reply: Reply) -> list[Block]:
    return list(reply) if isinstance(reply, list) else []


def _stop_reason(blocks: list[Block]) -> str:
    return "tool_use" if any(b.get("type") == "tool_use" for b in blocks) else "end_turn"


def _message(model: str, blocks: list[Block]) -> dict[str, Any]:
    return {
        "id": _id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": _stop_reason(blocks),
        "stop_sequence": None,
        "usage": {
            "input_tokens": 100,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 20,
            "service_tier": "standard",
        },
    }


class AnthropicServer:
    """The scripted API on ``127.0.0.1:<free port>``, serving from a background thread.

    ``script`` may be replaced between runs (``server.script = …``). :meth:`stop` ends every
    hang and stall at once, so a test never waits for a stalled handler.
    """

    def __init__(self, script: Script = hello_script) -> None:
        self.script: Script = script
        self.requests: list[ApiRequest] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="anthropic-server",
            daemon=True,
        )

    @property
    def url(self) -> str:
        """The base URL to put in ``ANTHROPIC_BASE_URL``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def record(self, request: ApiRequest) -> None:
        """Keep ``request`` (thread-safe)."""
        with self._lock:
            self.requests.append(request)

    @property
    def message_requests(self) -> list[ApiRequest]:
        """The ``POST /v1/messages`` requests received so far."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    def start(self) -> AnthropicServer:
        """Start serving; returns ``self``."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release stalled handlers, stop serving and close the socket; idempotent."""
        self.stopping.set()
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=10)
        self._httpd.server_close()

    def __enter__(self) -> AnthropicServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@pytest.fixture
def anthropic_server() -> Iterator[AnthropicServer]:
    """A running scripted API (:func:`hello_script` until the test sets ``.script``),
    stopped after the test. Import it into a test module or list this module in
    ``pytest_plugins`` to use it."""
    with AnthropicServer(hello_script) as server:
        yield server
