"""In-process wake-ups for event watchers, with a polling fallback for other processes."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

#: How often a watcher re-reads the database when no in-process append woke it: events
#: written by a worker in another process show up within this delay.
POLL_INTERVAL_S = 0.2


class EventSignals:
    """One :class:`asyncio.Event` per task that watchers wait on and appends set."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._waiting: defaultdict[str, int] = defaultdict(int)

    def notify(self, task_id: str) -> None:
        """Wake every watcher of ``task_id``."""
        event = self._events.pop(task_id, None)
        if event is not None:
            event.set()

    async def wait(self, task_id: str, timeout_s: float) -> None:
        """Return on the next notify of ``task_id``, or after ``min(timeout_s, poll)``."""
        event = self._events.setdefault(task_id, asyncio.Event())
        self._waiting[task_id] += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(timeout_s, POLL_INTERVAL_S))
        finally:
            # The last watcher to leave takes the entry with it: no table growing forever.
            self._waiting[task_id] -= 1
            if self._waiting[task_id] == 0:
                del self._waiting[task_id]
                if self._events.get(task_id) is event:
                    del self._events[task_id]
