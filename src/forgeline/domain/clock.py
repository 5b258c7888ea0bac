"""Time: the one place that reads the clock and formats timestamps.

:func:`utcnow` and :func:`format_time` are what the domain, the services and the public
shapes use for wall-clock time. :class:`Clock` is what long-running services (the worker,
the leased pool) take instead of calling ``time.monotonic`` and ``asyncio.sleep``
themselves, so the fast tests can run a lease's worth of heartbeats with a fake clock
(``forgeline.testing.FakeClock``) in no real time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the only wall clock the domain uses)."""
    return datetime.now(UTC)


#: Where a store reads the current wall-clock time: :func:`utcnow`, or a test's own.
WallClock = Callable[[], datetime]


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and ``Z``, as every public shape shows time."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


class Clock(Protocol):
    """A monotonic clock and the sleeps measured by it."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (only differences mean anything)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; cancellable like ``asyncio.sleep``."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep(seconds)``."""
        await asyncio.sleep(seconds)


#: The clock services use unless a test hands them another.
SYSTEM_CLOCK: Clock = SystemClock()
