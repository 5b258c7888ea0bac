"""A fake :class:`~forgeline.domain.clock.Clock`: time moves only when something sleeps."""

from __future__ import annotations

import asyncio


class FakeClock:
    """A clock whose ``sleep`` advances it at once instead of waiting.

    A heartbeat every ten seconds of a thirty-second lease runs as fast as the event loop
    turns: each sleep moves :attr:`now` by its length and yields once, so the other tasks
    (the build, the test) make progress between two "ticks". :meth:`advance` moves time
    without sleeping (a pause of the whole process, as a stuck database would make).
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        #: Every sleep asked for, in order (what a test may check a policy with).
        self.sleeps: list[float] = []
        self._slept = asyncio.Event()

    def monotonic(self) -> float:
        """The fake time now."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Move the clock by ``seconds`` and let the other tasks run once."""
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)
        self._slept.set()
        await asyncio.sleep(0)

    async def sleeps_passed(self, count: int) -> None:
        """Return once ``count`` more sleeps have begun (of whatever sleeps on this clock):
        with a loop that sleeps between its rounds, a whole round has run in between."""
        target = len(self.sleeps) + count
        while len(self.sleeps) < target:
            self._slept.clear()
            await self._slept.wait()

    def advance(self, seconds: float) -> None:
        """Move the clock by ``seconds`` without yielding."""
        self.now += seconds
