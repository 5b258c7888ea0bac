"""The client's SSE handling and the run's bounded buffer, against in-process fakes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import pytest

from forgeline.adapters.agents.opencode import stream as stream_module
from forgeline.adapters.agents.opencode.client import OpenCodeClient, ServerAddress
from forgeline.adapters.agents.opencode.events import (
    OpenCodeEvent,
    ServerConnected,
    SessionIdle,
    SessionStatus,
    UnknownEvent,
)
from forgeline.adapters.agents.opencode.stream import Resync, SessionStream, StreamFailed
from forgeline.domain.errors import ExternalServiceError
from forgeline.domain.secrets import Secret

SID = "ses_1"


def frame(kind: str, **props: Any) -> bytes:
    """One SSE frame as the server writes it."""
    return f"data: {json.dumps({'type': kind, 'properties': props})}\n\n".encode()


def client_for(handler: Any) -> OpenCodeClient:
    """A client whose transport is ``handler`` (no network)."""
    client = OpenCodeClient(ServerAddress("http://oc.test", Secret("pw-123456")))
    client._http = httpx.AsyncClient(
        base_url="http://oc.test", transport=httpx.MockTransport(handler)
    )
    return client


async def test_sse_frames_split_at_every_byte() -> None:
    """Frames cut at any byte boundary decode to the same events."""
    body = b"".join(
        [
            frame("server.connected"),
            frame("session.status", sessionID=SID, status={"type": "busy"}),
            frame("session.idle", sessionID=SID),
        ]
    )

    async def one_byte_at_a_time() -> AsyncIterator[bytes]:
        for i in range(len(body)):
            yield body[i : i + 1]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["directory"] == "/p"
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=one_byte_at_a_time()
        )

    client = client_for(handler)
    async with client.events("/p") as events:
        got = [event async for event in events]
    await client.aclose()
    assert got == [ServerConnected(), SessionStatus(SID, "busy"), SessionIdle(SID)]


async def test_html_answer_is_an_error_with_context() -> None:
    """P1: an unknown route answers 200 HTML; that is an error carrying method and path."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/html"}, text="<html>ui</html>")

    client = client_for(handler)
    with pytest.raises(ExternalServiceError) as caught:
        await client.session_status("/p")
    assert caught.value.method == "GET"
    assert caught.value.path == "/session/status"
    assert caught.value.status_code == 200
    assert caught.value.body_excerpt == "<html>ui</html>"
    with pytest.raises(ExternalServiceError):
        async with client.events("/p"):
            pass
    await client.aclose()


async def test_http_errors_carry_a_bounded_body() -> None:
    """4xx/5xx become ExternalServiceError with status and an excerpt of the body."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"name": "NotFoundError", "data": {"message": "x" * 5000}})

    client = client_for(handler)
    with pytest.raises(ExternalServiceError) as caught:
        await client.get_session("ses_nope", "/p")
    await client.aclose()
    assert caught.value.status_code == 404
    assert caught.value.path == "/session/ses_nope"
    assert caught.value.body_excerpt is not None
    assert len(caught.value.body_excerpt) == 500
    assert "pw-123456" not in str(caught.value)


class FakeClient:
    """Scripted stream connections: each item of ``connections`` is one subscription."""

    def __init__(self, connections: list[list[OpenCodeEvent] | Exception]) -> None:
        self.connections = connections
        self.opened = 0

    @asynccontextmanager
    async def events(self, directory: str) -> AsyncIterator[AsyncIterator[OpenCodeEvent]]:
        index = self.opened
        self.opened += 1
        if index >= len(self.connections):
            raise ExternalServiceError("refused", service="opencode")
        planned = self.connections[index]
        if isinstance(planned, Exception):
            raise planned

        async def gen() -> AsyncIterator[OpenCodeEvent]:
            for event in planned:
                yield event

        yield gen()


def stream_of(fake: FakeClient, maxsize: int = 1024) -> SessionStream:
    """A SessionStream over the fake."""
    return SessionStream(cast("OpenCodeClient", fake), "/p", SID, maxsize=maxsize)


async def test_slow_consumer_gets_backpressure_not_drops() -> None:
    """With a tiny buffer and a slow reader, every event arrives, the terminal one last."""
    events: list[OpenCodeEvent] = [ServerConnected()]
    events += [SessionStatus(SID, "busy", attempt=i) for i in range(50)]
    events += [UnknownEvent("plugin.added"), SessionStatus("ses_other", "busy"), SessionIdle(SID)]
    stream = stream_of(FakeClient([events, [ServerConnected()]]), maxsize=4)
    await stream.open()
    got = []
    for _ in range(51):
        await asyncio.sleep(0)  # a consumer slower than the reader
        got.append(await stream.get())
    await stream.aclose()
    assert got[:50] == [SessionStatus(SID, "busy", attempt=i) for i in range(50)]
    assert got[50] == SessionIdle(SID)  # other sessions' and server events are filtered


async def test_reconnect_puts_a_resync_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dropped stream is re-opened and the run is told to re-sync, in order."""
    monkeypatch.setattr(stream_module, "RECONNECT_DELAYS_S", (0.0, 0.0))
    fake = FakeClient(
        [
            [ServerConnected(), SessionStatus(SID, "busy")],
            ExternalServiceError("refused", service="opencode"),
            [ServerConnected(), SessionIdle(SID)],
        ]
    )
    stream = stream_of(fake)
    await stream.open()
    got = [await stream.get() for _ in range(3)]
    assert got == [SessionStatus(SID, "busy"), Resync(attempt=2), SessionIdle(SID)]
    failed = await stream.get()  # then the fake refuses for good
    assert isinstance(failed, StreamFailed)
    await stream.aclose()


async def test_first_subscription_failure_is_raised() -> None:
    """A stream that cannot be opened fails open(): no prompt is sent blind."""
    stream = stream_of(FakeClient([ExternalServiceError("401", service="opencode")]))
    with pytest.raises(ExternalServiceError):
        await stream.open()


async def test_reader_crash_becomes_a_stream_failure() -> None:
    """An unexpected error in the reader ends the stream visibly, never silently."""

    class Exploding(FakeClient):
        @asynccontextmanager
        async def events(self, directory: str) -> AsyncIterator[AsyncIterator[OpenCodeEvent]]:
            async def gen() -> AsyncIterator[OpenCodeEvent]:
                yield ServerConnected()
                raise RuntimeError("bug")

            yield gen()

    stream = stream_of(Exploding([]))
    await stream.open()
    failed = await stream.get()
    assert isinstance(failed, StreamFailed)
    assert "RuntimeError" in failed.error.message
    await stream.aclose()
