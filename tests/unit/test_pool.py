"""The leased pool that the worker and the callback dispatcher share, over an in-memory
source: its concurrency bound, its wake-ups, a claim it already runs, and its drain."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from forgeline.domain.errors import StorageError
from forgeline.services.pool import LeasedPool


class Changes:
    """Set whenever a source or a run changes state: what :meth:`until` waits on."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def touch(self) -> None:
        """Something changed."""
        self.event.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds (ten seconds at most)."""
        async with asyncio.timeout(10):
            while not condition():
                self.event.clear()
                await self.event.wait()


class Items:
    """A source of named items; records releases; ``broken`` makes claims raise."""

    def __init__(self, *names: str) -> None:
        self.changes = Changes()
        self.waiting = list(names)
        self.released: list[str] = []
        self.limits: list[int] = []
        self.broken = 0

    def key(self, claimed: str) -> str:
        """The item's name."""
        return claimed

    async def claim(self, limit: int) -> Sequence[str]:
        """Up to ``limit`` waiting items (a broken source raises, then recovers)."""
        if self.broken:
            self.broken -= 1
            raise StorageError("database unreachable")
        self.limits.append(limit)
        taken, self.waiting = self.waiting[:limit], self.waiting[limit:]
        self.changes.touch()
        return taken

    async def release(self, claimed: str) -> None:
        """Record the release."""
        self.released.append(claimed)
        self.changes.touch()

    async def wait_for_work(self, timeout_s: float) -> None:
        """Nothing announces work: wait the whole timeout."""
        await asyncio.sleep(timeout_s)


class Runs:
    """Runs that hold until the test lets them end; counts how many ran at once."""

    def __init__(self, changes: Changes) -> None:
        self.changes = changes
        self.started: list[str] = []
        self.running = 0
        self.most = 0
        self.go = asyncio.Event()
        self.finished: list[str] = []

    async def __call__(self, item: str) -> None:
        self.started.append(item)
        self.changes.touch()
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.go.wait()
            self.finished.append(item)
        finally:
            self.running -= 1
            self.changes.touch()


async def test_runs_every_claim_never_more_than_the_concurrency_at_once() -> None:
    """Five items through two slots: every one runs, never three at once, and a freed
    slot is claimed again without waiting for the idle timeout."""
    source = Items("a", "b", "c", "d", "e")
    runs = Runs(source.changes)
    pool = LeasedPool(source, runs, name="test", concurrency=2, idle_s=60.0)
    stop = asyncio.Event()
    serving = asyncio.create_task(pool.serve(stop))
    await source.changes.until(lambda: len(runs.started) == 2)
    assert sorted(pool.running) == ["a", "b"]
    runs.go.set()
    await source.changes.until(lambda: len(runs.finished) == 5)
    stop.set()
    await serving
    await pool.drain(1.0)
    assert runs.most == 2
    assert max(source.limits) <= 2
    assert source.released == []


async def test_a_failing_claim_is_tried_again() -> None:
    """A claim that raises (the database away) is logged and tried again; the loop lives."""
    source = Items("a")
    runs = Runs(source.changes)
    source.broken = 2
    runs.go.set()
    pool = LeasedPool(source, runs, name="test", concurrency=1, idle_s=0.01)
    stop = asyncio.Event()
    serving = asyncio.create_task(pool.serve(stop))
    await source.changes.until(lambda: runs.finished == ["a"])
    stop.set()
    await serving


async def test_a_claim_already_running_is_given_back() -> None:
    """The same key claimed while its earlier run winds down is released, not run twice."""
    source = Items("a")
    runs = Runs(source.changes)
    pool = LeasedPool(source, runs, name="test", concurrency=2, idle_s=60.0)
    stop = asyncio.Event()
    serving = asyncio.create_task(pool.serve(stop))
    await source.changes.until(lambda: runs.started == ["a"])
    source.waiting.append("a")
    pool.notify()
    await source.changes.until(lambda: source.released == ["a"])
    assert runs.started == ["a"]
    stop.set()
    await serving
    await pool.drain(0.0)


async def test_drain_cancels_what_outlives_the_grace_and_gives_it_back() -> None:
    """On stop, runs get the grace period; the rest are cancelled and released."""
    source = Items("a", "b")
    runs = Runs(source.changes)
    pool = LeasedPool(source, runs, name="test", concurrency=2, idle_s=60.0)
    stop = asyncio.Event()
    serving = asyncio.create_task(pool.serve(stop))
    await source.changes.until(lambda: len(runs.started) == 2)
    stop.set()
    await serving
    await pool.drain(0.01)
    assert sorted(source.released) == ["a", "b"]
    assert runs.finished == []
    assert pool.running == []
