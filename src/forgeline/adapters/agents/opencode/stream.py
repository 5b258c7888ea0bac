"""One run's view of the event stream: a reader task, a bounded buffer, reconnects.

A :class:`SessionStream` subscribes to ``GET /event?directory=…`` and keeps only the events
of its session. A reader task (named, owned by the stream, cancelled and awaited by
:meth:`SessionStream.aclose`) puts them into a bounded queue; the run takes them out with
:meth:`SessionStream.get`.

**The buffer.** :data:`EVENT_BUFFER_SIZE` items. A run produces a few hundred events at
most between two reads of a consumer that keeps up (text deltas are the bulk: one per
streamed chunk), so 1024 absorbs bursts while bounding memory to about a megabyte per run.
When the consumer is slower than that, the buffer fills and the reader *waits* for room
(backpressure): it stops reading the socket, TCP pushes back on the server, and the
server keeps the rest in its own stream buffer. Nothing is ever dropped, so a terminal
event (``session.error``, ``session.idle``) always reaches the run.

**Reconnects.** The v1 stream has no replay cursor. When it breaks (EOF, a transport
error, three missed heartbeats), the reader reconnects with a capped backoff and, once the
new stream says ``server.connected``, puts a :class:`Resync` marker into the buffer: the
run then re-reads ``GET /session/status`` and the session's messages, and its translator
drops whatever it has emitted already. Events after the marker come from the new stream,
so the union of "stored state at resync" and "events after it" misses nothing. When the
server stays unreachable, a :class:`StreamFailed` marker ends the reading.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from forgeline.adapters.agents.opencode.client import OpenCodeClient
from forgeline.adapters.agents.opencode.events import (
    Heartbeat,
    OpenCodeEvent,
    ServerConnected,
    event_session_id,
)
from forgeline.domain.errors import ExternalServiceError

#: Capacity of the buffer between the reader and the run (see the module docstring).
EVENT_BUFFER_SIZE = 1024

#: Waits between reconnect attempts; after the last one the stream is declared failed
#: (about 15 s of an unreachable server in all).
RECONNECT_DELAYS_S = (0.05, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 4.0)

#: How long a fresh subscription may take to say ``server.connected``.
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Resync:
    """The stream was re-established; events in between may be lost: re-read state."""

    attempt: int


@dataclass(frozen=True, slots=True)
class StreamFailed:
    """The stream is gone for good; ``error`` says why."""

    error: ExternalServiceError


StreamItem = OpenCodeEvent | Resync | StreamFailed


class SessionStream:
    """The events of one session, buffered; start with :meth:`open`, end with :meth:`aclose`."""

    def __init__(
        self,
        client: OpenCodeClient,
        directory: str,
        session_id: str,
        *,
        maxsize: int = EVENT_BUFFER_SIZE,
        name: str = "opencode-events",
    ) -> None:
        self._client = client
        self._directory = directory
        self._session_id = session_id
        self._queue: asyncio.Queue[StreamItem] = asyncio.Queue(maxsize=maxsize)
        self._connected = asyncio.Event()
        self._first_error: ExternalServiceError | None = None
        self._task: asyncio.Task[None] | None = None
        self._name = name
        self.reconnects = 0

    async def open(self) -> None:
        """Start reading and return once subscribed (so a prompt sent now is seen).

        Raises :class:`ExternalServiceError` when the first subscription fails: a run must
        not send a prompt it could not follow.
        """
        self._task = asyncio.create_task(self._read(), name=self._name)
        waiter = asyncio.create_task(self._connected.wait(), name=f"{self._name}-connected")
        try:
            await asyncio.wait(
                {waiter, self._task},
                timeout=CONNECT_TIMEOUT_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        if not self._connected.is_set():
            await self.aclose()
            raise self._first_error or ExternalServiceError(
                f"no server.connected within {CONNECT_TIMEOUT_S:g} s",
                service="opencode",
                method="GET",
                path="/event",
            )

    async def get(self) -> StreamItem:
        """The next item (waits; callers bound the wait with their own deadlines)."""
        return await self._queue.get()

    async def aclose(self) -> None:
        """Stop the reader and wait for it; idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _read(self) -> None:
        attempt = 0
        while True:
            try:
                async with self._client.events(self._directory) as events:
                    async for event in events:
                        if isinstance(event, ServerConnected):
                            if self._connected.is_set():
                                await self._queue.put(Resync(attempt))
                            self._connected.set()
                            attempt = 0
                            continue
                        if isinstance(event, Heartbeat):
                            continue
                        if event_session_id(event) == self._session_id:
                            # Backpressure: wait for room, never drop (module docstring).
                            await self._queue.put(event)
                error = ExternalServiceError(
                    "event stream ended", service="opencode", method="GET", path="/event"
                )
            except ExternalServiceError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - a reader dying silently would hang the run
                error = ExternalServiceError(
                    f"event reader failed: {type(exc).__name__}: {exc}", service="opencode"
                )
                if self._connected.is_set():
                    await self._queue.put(StreamFailed(error))
                else:
                    self._first_error = error
                return
            if not self._connected.is_set():
                # The first subscription failed: open() reports it, no retrying blindly.
                self._first_error = error
                return
            if attempt >= len(RECONNECT_DELAYS_S):
                await self._queue.put(StreamFailed(error))
                return
            await asyncio.sleep(RECONNECT_DELAYS_S[attempt])
            attempt += 1
            self.reconnects += 1
