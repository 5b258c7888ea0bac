"""A real HTTP callback receiver for tests: records requests, checks signatures, misbehaves.

Runs a ``ThreadingHTTPServer`` on 127.0.0.1 in a daemon thread. Every POST is recorded as a
:class:`ReceivedCallback` (headers, raw body, whether the signature verifies with the
receiver's secret). How it answers is scripted::

    with CallbackReceiver(secret="k" * 32) as receiver:
        receiver.script(500, 500)            # the next two requests get 500, then 200
        receiver.script(Behaviour.CLOSE)      # drop the connection without answering
        receiver.script(Behaviour.HANG)       # hold the request until the receiver stops
        receiver.script(Reply(503, b"busy", (("Retry-After", "2"),)))
        ...
        got = await receiver.wait_for(1, timeout_s=10)

With ``ssl_context`` it serves HTTPS (the context holds the certificate).
``down()`` stops listening (connections are refused) and ``up()`` listens again on the same
port, to play a receiver that is down for a while. ``stop()`` (or leaving the ``with``)
releases hanging requests and joins the thread, so nothing outlives the test.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from forgeline.domain.callbacks import SIGNATURE_HEADER, verify


class Behaviour(Enum):
    """Answers other than a status code."""

    CLOSE = "close"  # read the request, then close the connection without answering
    HANG = "hang"  # read the request, then never answer (until the receiver stops)


@dataclass(frozen=True)
class Reply:
    """A scripted answer with a chosen body and headers."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


Answer = int | Behaviour | Reply


@dataclass(frozen=True)
class ReceivedCallback:
    """One request the receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    signature_valid: bool
    answered: int | str
    received_at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        """A header's value, case-insensitively."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


class _Server(ThreadingHTTPServer):
    # The default backlog (5) drops connections when many deliveries arrive at once; the
    # sender then sees a connect timeout that has nothing to do with what a test checks.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A sender that hangs up mid-answer (bounded reads, timeouts) is what some tests
        # provoke on purpose; anything else is still reported.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class CallbackReceiver:
    """A scriptable webhook receiver on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        secret: str,
        *,
        port: int = 0,
        default: int = 200,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.secret = secret
        self.default = default
        self._port = port
        self._ssl_context = ssl_context
        self._lock = threading.Condition()
        self._script: list[Answer] = []
        self._received: list[ReceivedCallback] = []
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port (fixed after the first ``start``, so ``down``/``up`` keep it)."""
        return self._port

    def url(self, path: str = "/hook", *, host: str = "127.0.0.1") -> str:
        """The URL of ``path`` on this receiver (``host``: a name that resolves to it)."""
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{host}:{self._port}{path}"

    def start(self) -> CallbackReceiver:
        """Listen (again) on the port; idempotent."""
        if self._server is not None:
            return self
        self._release.clear()
        server = _Server(("127.0.0.1", self._port), self._handler_class())
        server.daemon_threads = True
        if self._ssl_context is not None:
            server.socket = self._ssl_context.wrap_socket(server.socket, server_side=True)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"callback-receiver:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, release hanging requests, join the thread; idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self._release.set()
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def down(self) -> None:
        """Stop listening for a while: connections are refused until :meth:`up`."""
        self.stop()

    def up(self) -> None:
        """Listen again on the same port."""
        self.start()

    def __enter__(self) -> CallbackReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- scripting and inspection ----------------------------------------------------------

    def script(self, *answers: Answer) -> None:
        """Answer the next requests with these (in order), then with ``default``."""
        with self._lock:
            self._script.extend(answers)

    @property
    def received(self) -> list[ReceivedCallback]:
        """Every request so far, in arrival order."""
        with self._lock:
            return list(self._received)

    def wait_for_sync(self, count: int, timeout_s: float) -> list[ReceivedCallback]:
        """Block until ``count`` requests arrived; ``TimeoutError`` after ``timeout_s``."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._received) >= count, timeout_s):
                raise TimeoutError(
                    f"expected {count} callback requests within {timeout_s}s, "
                    f"got {len(self._received)}"
                )
            return list(self._received)

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[ReceivedCallback]:
        """:meth:`wait_for_sync` without blocking the event loop."""
        return await asyncio.to_thread(self.wait_for_sync, count, timeout_s)

    def by_delivery(self) -> dict[str, list[ReceivedCallback]]:
        """Requests grouped by their ``X-Forgeline-Delivery`` header."""
        groups: dict[str, list[ReceivedCallback]] = {}
        for item in self.received:
            groups.setdefault(item.header("X-Forgeline-Delivery") or "", []).append(item)
        return groups

    # --- the handler -----------------------------------------------------------------------

    def _next_answer(self) -> Answer:
        with self._lock:
            return self._script.pop(0) if self._script else self.default

    def _record(self, item: ReceivedCallback) -> None:
        with self._lock:
            self._received.append(item)
            self._lock.notify_all()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the second waits for
            # the client's delayed ACK (~40 ms) — a latency no real receiver has.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                answer = receiver._next_answer()
                receiver._record(
                    ReceivedCallback(
                        method="POST",
                        path=self.path,
                        headers=dict(self.headers.items()),
                        body=body,
                        signature_valid=verify(
                            body, receiver.secret, self.headers.get(SIGNATURE_HEADER)
                        ),
                        answered=(
                            answer.value
                            if isinstance(answer, Behaviour)
                            else answer.status
                            if isinstance(answer, Reply)
                            else answer
                        ),
                    )
                )
                if answer is Behaviour.HANG:
                    receiver._release.wait(timeout=60)
                    self.close_connection = True
                    return
                if answer is Behaviour.CLOSE:
                    self.close_connection = True
                    return
                if not isinstance(answer, Reply):
                    body_out = b'{"ok":true}' if 200 <= answer < 300 else b'{"error":"scripted"}'
                    answer = Reply(answer, body_out)
                payload = answer.body
                self.send_response(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
                pass  # keep test output clean

        return Handler
