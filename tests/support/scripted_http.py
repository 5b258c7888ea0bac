"""The common part of the scripted model servers on 127.0.0.1 (Responses API, Gemini).

A :class:`ScriptedServer` runs a ``ThreadingHTTPServer`` in daemon threads, so it keeps
answering while a test's event loop is busy; it records every JSON request it receives and
asks its *script* (a function of the subclass's request type) what to answer. A subclass
supplies :meth:`ScriptedServer.handle`, which turns one request into a response with the
helpers of :class:`Exchange` (JSON, SSE events, a hang until the client goes away).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

R = TypeVar("R")
A = TypeVar("A")


class Exchange:
    """One HTTP request being answered (the handler, seen from a server's ``handle``)."""

    def __init__(self, handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        self._handler = handler
        self._stopping = stopping
        self.path = handler.path
        self.headers = {k.lower(): v for k, v in handler.headers.items()}
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        self.body: dict[str, Any] = json.loads(raw) if raw.strip() else {}

    def json(self, status: int, obj: Any) -> None:
        """Answer with a JSON document."""
        data = json.dumps(obj).encode()
        self._handler.send_response(status)
        self._handler.send_header("content-type", "application/json")
        self._handler.send_header("content-length", str(len(data)))
        self._handler.end_headers()
        self._handler.wfile.write(data)

    def start_sse(self) -> None:
        """Send the headers of an event stream that ends when the connection closes."""
        self._handler.send_response(200)
        self._handler.send_header("content-type", "text/event-stream")
        self._handler.send_header("cache-control", "no-cache")
        self._handler.send_header("connection", "close")
        self._handler.end_headers()
        self._handler.close_connection = True

    def sse(self, data: Any, event: str | None = None) -> None:
        """Send one SSE event whose data is ``data`` as JSON."""
        head = f"event: {event}\n" if event else ""
        self._write(f"{head}data: {json.dumps(data)}\n\n")

    def hang(self, seconds: float) -> None:
        """Send keep-alive comments until the client goes away, ``seconds`` pass or the
        server stops."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stopping.is_set():
            self._write(": keep-alive\n\n")
            self._stopping.wait(0.2)

    def _write(self, text: str) -> None:
        self._handler.wfile.write(text.encode())
        self._handler.wfile.flush()


class ScriptedServer(Generic[R, A]):
    """A scripted model server; use as a context manager (started on entry)."""

    def __init__(self, script: Callable[[R], A]) -> None:
        self.script = script
        self._lock = threading.Lock()
        self._requests: list[R] = []
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def handle(self, exchange: Exchange) -> None:
        """Answer one POST (the subclass's wire API)."""
        raise NotImplementedError

    def record(self, request: R) -> None:
        """Remember ``request`` (see :attr:`requests`)."""
        with self._lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[R]:
        """Every request recorded so far."""
        with self._lock:
            return list(self._requests)

    @property
    def port(self) -> int:
        """The port the server listens on."""
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    def __enter__(self) -> Self:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                """Quiet: access logs help no test."""

            def do_POST(self) -> None:
                # The client going away (cancelled, timed out) is expected.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    owner.handle(Exchange(self, owner._stopping))

            def do_GET(self) -> None:
                Exchange(self, owner._stopping).json(404, {"error": {"message": "not found"}})

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
