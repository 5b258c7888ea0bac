"""One PostgreSQL LISTEN connection per process, shared by every adapter that wants wake-ups.

The work queue follows ``forgeline_work`` and ``forgeline_cancel``, the event store
``forgeline_events``; they subscribe to the one :class:`Listener` of the process's
:class:`~forgeline.adapters.sql.database.PostgresDatabase`, so a process holds one
listening connection however many channels and watchers it has.

The connection is kept by a named background task that reconnects on its own (with
jittered back-off). Notifications sent while it is away are lost, so every subscriber's
``on_change`` is called when the connection is lost (poll from now on) and when it is made
again (look once for what was missed): a subscriber that does both never misses a change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

import structlog

from forgeline.domain.backoff import Backoff

_log = structlog.get_logger(__name__)

#: Quiet for this long, the listener checks that its connection is still alive.
HEALTH_S = 10.0


class Listener:
    """A LISTEN connection for a whole process (not started until :meth:`start`).

    Callbacks run on the event loop, in the listener's task: they must be quick and must
    not raise (they typically set an :class:`asyncio.Event`).
    """

    def __init__(self, url: str, *, health_s: float = HEALTH_S) -> None:
        self._url = url
        self._health_s = health_s
        self._handlers: dict[str, list[Callable[[str], None]]] = {}
        self._on_change: list[Callable[[], None]] = []
        self._listening: frozenset[str] = frozenset()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.connected = False

    def subscribe(
        self, handlers: Mapping[str, Callable[[str], None]], on_change: Callable[[], None]
    ) -> Callable[[], None]:
        """Call ``handlers[channel](payload)`` for each notification on ``channel``, and
        ``on_change()`` whenever the connection is lost or (re)made; returns the function
        that ends the subscription. Channels new to a running listener are listened to
        from the next :meth:`start` on."""
        for channel, handler in handlers.items():
            self._handlers.setdefault(channel, []).append(handler)
        self._on_change.append(on_change)

        def unsubscribe() -> None:
            for channel, handler in handlers.items():
                with contextlib.suppress(KeyError, ValueError):
                    self._handlers[channel].remove(handler)
            with contextlib.suppress(ValueError):
                self._on_change.remove(on_change)

        return unsubscribe

    async def start(self, *, wait_s: float) -> None:
        """Listen to every subscribed channel; wait up to ``wait_s`` for the connection.

        A channel subscribed after the connection was made costs one reconnect (seen by
        every subscriber as a change): channels are subscribed once per process, at the
        first use of the adapter that follows them.
        """
        if (
            self._task is not None
            and self.connected
            and not self._handlers.keys() <= self._listening
        ):
            task, self._task = self._task, None
            task.cancel()
            await asyncio.wait({task})
            self.connected = False
            self._ready = asyncio.Event()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="forgeline-pg-listener")
        if wait_s > 0 and not self._ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait_s)

    def _changed(self) -> None:
        for on_change in list(self._on_change):
            on_change()

    async def _run(self) -> None:
        import psycopg

        backoff = Backoff(base_s=0.1, max_s=2.0)
        attempt = 1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=5
                )
                async with conn:
                    listening: set[str] = set()
                    # Subscriptions may arrive while we await: listen until none is left.
                    while missing := self._handlers.keys() - listening:
                        for channel in sorted(missing):
                            await conn.execute(f'listen "{channel}"')
                            listening.add(channel)
                    self._listening = frozenset(listening)
                    self.connected = True
                    self._ready.set()
                    self._changed()
                    attempt = 1
                    while True:
                        async for note in conn.notifies(timeout=self._health_s):
                            for handler in list(self._handlers.get(note.channel, ())):
                                handler(note.payload)
                        # Quiet for a while: make sure the connection is still alive.
                        await conn.execute("select 1")
            except Exception as exc:  # noqa: BLE001  # whatever broke, listen again; subscribers poll meanwhile
                from forgeline.adapters.sql.database import safe_message

                if self.connected:
                    _log.warning("database listener lost its connection", error=safe_message(exc))
                self.connected = False
                self._changed()  # subscribers fall back to polling right away
                await asyncio.sleep(backoff.delay(attempt))
                attempt += 1

    async def aclose(self) -> None:
        """Stop listening and wait until the connection is closed; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # wait() rather than `await task`: our own cancellation must still propagate.
            await asyncio.wait({task})
        self.connected = False
        self._listening = frozenset()
