"""What every request leaves behind: an ``X-Request-ID``, one structured access log line,
and its count and duration in the metrics.

The request id is the client's ``X-Request-ID`` when it sends a sane one (so one id
follows a request through a proxy and into forgeline's log), else a new one; it is echoed
in the answer and bound to every log line written while the request is served.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: A request id forgeline takes from a client: short, and nothing a log could misread.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: The route label of a request no route matched (so unknown paths add no label values).
UNMATCHED = "unmatched"

log = structlog.get_logger("forgeline.api.access")


class AccessLog:
    """Gives every HTTP request an id, logs it once answered (method, path, status,
    duration, request id) and counts it in the app's metrics by route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        started = time.monotonic()
        status = 500  # what the client gets if the app fails before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                await self.app(scope, receive, sending)
        finally:
            took = time.monotonic() - started
            route = getattr(scope.get("route"), "path", UNMATCHED)
            method = scope["method"]
            log.info(
                "http.request",
                method=method,
                path=scope["path"],
                status=status,
                duration_ms=round(took * 1000, 1),
                request_id=request_id,
            )
            container = getattr(scope["app"].state, "container", None)
            if container is not None:
                container.metrics.http_request(route, method, status, took)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            sent: str = value.decode("latin-1")
            if _CLIENT_ID.fullmatch(sent):
                return sent
    return uuid.uuid4().hex
