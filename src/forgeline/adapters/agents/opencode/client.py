"""The HTTP client of ``opencode serve``: the few v1 routes the adapter uses, on httpx.

Every failure leaves this module as :class:`ExternalServiceError` carrying the method, the
path (never the query: it may name a directory, and auth could ride there), the status and
a bounded excerpt of the body. Two traps of the real server are handled here once:

- every unknown route answers ``200 text/html`` (the web UI), so a JSON route must answer
  ``application/json`` or the answer is an error (pitfall P1);
- ``POST /session/{id}/abort`` answers ``true`` for anything, so its answer is ignored and
  callers confirm from ``GET /session/status`` (pitfall P3).

The directory of a call travels as ``?directory=`` (URL-encoded, so any path works, unlike
a header).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from forgeline.adapters.agents.opencode.events import (
    OpenCodeEvent,
    StoredMessage,
    parse_frame,
    parse_stored_message,
)
from forgeline.domain.errors import ExternalServiceError
from forgeline.domain.secrets import Secret

SERVICE = "opencode"

#: How much of an error body an exception carries: enough for opencode's JSON errors
#: (``{"name":"NotFoundError","data":{"message":…}}``), never a whole HTML page.
BODY_EXCERPT_LIMIT = 500

#: Ordinary calls answer in milliseconds; 30 s covers a loaded machine and the first call
#: naming a directory (instance bootstrap, ~0.12 s idle). Connecting is local: 5 s.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)

#: The event stream sends a heartbeat every 10 s; three missed heartbeats mean the
#: connection is dead even if TCP has not noticed, so reading gives up after 30 s.
STREAM_READ_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """Where a server listens and how to authenticate to it."""

    base_url: str
    password: Secret | None
    username: str = "opencode"


@dataclass(frozen=True, slots=True)
class SessionState:
    """One entry of ``GET /session/status`` (idle sessions are absent from the map)."""

    state: str
    attempt: int | None = None
    message: str | None = None


class OpenCodeClient:
    """Typed calls to one server; one instance per adapter, shared by its runs."""

    def __init__(self, address: ServerAddress, *, timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> None:
        auth = (
            httpx.BasicAuth(address.username, address.password.reveal())
            if address.password is not None
            else None
        )
        self.address = address
        self._http = httpx.AsyncClient(
            base_url=address.base_url,
            auth=auth,
            timeout=timeout,
            # Many concurrent runs each hold one stream plus short calls.
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
            headers={"accept": "application/json"},
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # --- routes ----------------------------------------------------------------------------

    async def health(self) -> str:
        """``GET /global/health``; returns the server version."""
        body = await self._json("GET", "/global/health")
        if not isinstance(body, Mapping) or body.get("healthy") is not True:
            raise self._error("GET", "/global/health", "server reports itself unhealthy", body)
        return str(body.get("version") or "")

    async def create_session(self, directory: str, title: str) -> str:
        """``POST /session`` with a title (no title means an extra model call); the id."""
        body = await self._json("POST", "/session", directory=directory, json={"title": title})
        return self._id(body, "POST", "/session")

    async def get_session(self, session_id: str, directory: str) -> str:
        """``GET /session/{id}``: the id if it exists (404 raises)."""
        path = f"/session/{session_id}"
        return self._id(await self._json("GET", path, directory=directory), "GET", path)

    async def prompt_async(
        self, session_id: str, directory: str, text: str, model: str | None
    ) -> None:
        """``POST /session/{id}/prompt_async`` (204): the run goes on in the server."""
        body: dict[str, Any] = {"parts": [{"type": "text", "text": text}]}
        if model:
            provider, _, model_id = model.partition("/")
            body["model"] = {"providerID": provider, "modelID": model_id}
        await self._call(
            "POST", f"/session/{session_id}/prompt_async", directory=directory, json=body
        )

    async def abort(self, session_id: str, directory: str) -> None:
        """``POST /session/{id}/abort``; its ``true`` proves nothing (see module doc)."""
        await self._json("POST", f"/session/{session_id}/abort", directory=directory)

    async def session_status(self, directory: str) -> dict[str, SessionState]:
        """``GET /session/status``: the sessions that are not idle."""
        body = await self._json("GET", "/session/status", directory=directory)
        if not isinstance(body, Mapping):
            raise self._error("GET", "/session/status", "expected an object", body)
        out: dict[str, SessionState] = {}
        for sid, raw in body.items():
            if isinstance(raw, Mapping):
                attempt = raw.get("attempt")
                message = raw.get("message")
                out[str(sid)] = SessionState(
                    state=str(raw.get("type") or "busy"),
                    attempt=attempt if isinstance(attempt, int) else None,
                    message=message if isinstance(message, str) else None,
                )
        return out

    async def messages(self, session_id: str, directory: str) -> list[StoredMessage]:
        """``GET /session/{id}/message``, oldest first; unusable entries are skipped."""
        path = f"/session/{session_id}/message"
        body = await self._json("GET", path, directory=directory)
        if not isinstance(body, list):
            raise self._error("GET", path, "expected a list", body)
        return [m for m in (parse_stored_message(item) for item in body) if m is not None]

    async def reply_permission(self, request_id: str, directory: str, reply: str) -> None:
        """``POST /permission/{id}/reply`` with ``once``, ``always`` or ``reject``."""
        await self._json(
            "POST", f"/permission/{request_id}/reply", directory=directory, json={"reply": reply}
        )

    @asynccontextmanager
    async def events(self, directory: str) -> AsyncIterator[AsyncIterator[OpenCodeEvent]]:
        """Subscribe to ``GET /event`` for one directory; yields an iterator of events.

        The first event of a healthy stream is ``ServerConnected``. Transport failures while
        iterating raise :class:`ExternalServiceError`; the stream has no replay, so the
        caller re-syncs from the stored state after reconnecting.
        """
        timeout = httpx.Timeout(DEFAULT_TIMEOUT.connect, read=STREAM_READ_TIMEOUT)
        try:
            async with aconnect_sse(
                self._http,
                "GET",
                "/event",
                params={"directory": directory},
                headers={"accept": "text/event-stream"},
                timeout=timeout,
            ) as source:
                response = source.response
                if response.status_code != 200:
                    await response.aread()
                    raise self._error("GET", "/event", "stream refused", response=response)
                content_type = response.headers.get("content-type", "")
                if not content_type.startswith("text/event-stream"):
                    await response.aread()
                    raise self._error(
                        "GET",
                        "/event",
                        f"expected an event stream, got {content_type!r}",
                        response=response,
                    )
                yield self._iter_events(source.aiter_sse())
        except httpx.HTTPError as exc:
            raise self._transport_error("GET", "/event", exc) from exc
        except SSEError as exc:
            raise ExternalServiceError(
                str(exc), service=SERVICE, method="GET", path="/event"
            ) from exc

    async def _iter_events(self, frames: AsyncIterator[Any]) -> AsyncIterator[OpenCodeEvent]:
        try:
            async for frame in frames:
                if frame.data:
                    yield parse_frame(frame.data)
        except httpx.HTTPError as exc:
            raise self._transport_error("GET", "/event", exc) from exc

    # --- plumbing --------------------------------------------------------------------------

    async def _json(
        self,
        method: str,
        path: str,
        *,
        directory: str | None = None,
        json: Any = None,
    ) -> Any:
        response = await self._call(method, path, directory=directory, json=json)
        content_type = response.headers.get("content-type", "")
        if "application/json" not in content_type:
            # P1: an unknown route (or a proxy's error page) answers 200 text/html.
            raise self._error(
                method,
                path,
                f"expected JSON, got {content_type or 'no content type'!r}",
                response=response,
            )
        try:
            return response.json()
        except ValueError as exc:
            raise self._error(method, path, "invalid JSON", response=response) from exc

    async def _call(
        self,
        method: str,
        path: str,
        *,
        directory: str | None = None,
        json: Any = None,
    ) -> httpx.Response:
        params = {"directory": directory} if directory else None
        try:
            response = await self._http.request(method, path, params=params, json=json)
        except httpx.HTTPError as exc:
            raise self._transport_error(method, path, exc) from exc
        if response.status_code >= 400:
            reason = {
                401: "authentication refused (missing or wrong server password)",
                404: "not found",
            }.get(response.status_code, "request failed")
            raise self._error(method, path, reason, response=response)
        return response

    def _id(self, body: Any, method: str, path: str) -> str:
        if isinstance(body, Mapping) and isinstance(body.get("id"), str):
            return str(body["id"])
        raise self._error(method, path, "answer has no session id", body)

    def _error(
        self,
        method: str,
        path: str,
        message: str,
        body: Any = None,
        *,
        response: httpx.Response | None = None,
    ) -> ExternalServiceError:
        excerpt: str | None
        if response is not None:
            excerpt = response.text[:BODY_EXCERPT_LIMIT] if response.content else None
        else:
            excerpt = json.dumps(body)[:BODY_EXCERPT_LIMIT] if body is not None else None
        return ExternalServiceError(
            message,
            service=SERVICE,
            method=method,
            path=path,
            status_code=response.status_code if response is not None else None,
            body_excerpt=excerpt,
        )

    def _transport_error(
        self, method: str, path: str, exc: httpx.HTTPError
    ) -> ExternalServiceError:
        kind = type(exc).__name__
        return ExternalServiceError(
            f"{kind}: {exc or 'no detail'}", service=SERVICE, method=method, path=path
        )
