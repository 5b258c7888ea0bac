"""A leased pool: claims work with a lease and runs each claim in a task of its own, up to a
concurrency. The build worker and the callback dispatcher are each one.

The loop: claim as many as there are free slots; start each claim as a named task; claim
again at once while claims come back; otherwise wait — for a wake-up (:meth:`notify`, a
slot freed), for the source to say that work may be due, for ``stop``, or ``idle_s`` at
the longest. A claim that fails (the database is away) is logged and tried again after an
idle wait; the loop outlives any one error. Two claims with one key never run side by
side: the second is given back (a run of ours that lost its lease may still be winding
down).

Stopping is in two halves, so the owner decides the grace: :meth:`serve` returns when
``stop`` is set (what it claimed meanwhile is given back), then :meth:`drain` lets the
running claims finish within a grace period, cancels the rest, and gives back every claim
whose run ended cancelled, so another process may take it at once instead of waiting for
its lease to expire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Generic, Protocol, TypeVar

import structlog

from forgeline.domain.errors import ForgelineError

log = structlog.get_logger("forgeline.pool")

#: A claim of the pool's source (a task's lease, a callback delivery).
C = TypeVar("C")

#: How long giving back one claim may take: an unreleased lease expires anyway.
RELEASE_TIMEOUT_S = 5.0
#: How long a run cancelled at the end of the grace period may take to stop.
STOP_TIMEOUT_S = 15.0


class Source(Protocol[C]):
    """Where a pool's work comes from: a queue of leased claims."""

    def key(self, claimed: C) -> str:
        """The claim's identity (its task's name; one run per key at a time)."""
        ...

    async def claim(self, limit: int) -> Sequence[C]:
        """Up to ``limit`` claims, leased to this pool (``limit`` may be 0: nothing to
        claim, but the source may do its periodic work). May raise: the pool logs it and
        tries again after an idle wait."""
        ...

    async def release(self, claimed: C) -> None:
        """Give back a claim that will not run here (the pool stops, or its run was
        cancelled); raising ``ForgelineError`` is fine (the lease expires anyway)."""
        ...

    async def wait_for_work(self, timeout_s: float) -> None:
        """Return when new work may be due, at the latest after ``timeout_s``."""
        ...


class LeasedPool(Generic[C]):
    """Runs ``run`` on every claim of ``source``, at most ``concurrency`` at once."""

    def __init__(
        self,
        source: Source[C],
        run: Callable[[C], Coroutine[Any, Any, None]],
        *,
        name: str,
        concurrency: int,
        idle_s: float,
    ) -> None:
        self._source = source
        self._run = run
        self.name = name
        self.concurrency = concurrency
        self.idle_s = idle_s
        self._running: dict[str, tuple[asyncio.Task[None], C]] = {}
        self._wake = asyncio.Event()

    @property
    def running(self) -> list[str]:
        """Keys of the claims running now."""
        return list(self._running)

    @property
    def free(self) -> int:
        """Slots free now."""
        return self.concurrency - len(self._running)

    def notify(self) -> None:
        """Claim again now (work was added in this process). Call it from the pool's
        event loop."""
        self._wake.set()

    async def serve(self, stop: asyncio.Event) -> None:
        """Claim and start runs until ``stop`` is set; the runs go on (see :meth:`drain`)."""
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    claimed = await self._source.claim(max(self.free, 0))
                except Exception as exc:  # noqa: BLE001 - the loop must outlive any one error
                    # The database went away (restart, network) or a bug hit one claim: the
                    # runs go on (their leases are their own), the claim is tried again.
                    log.warning(
                        "pool.claim_failed", pool=self.name, error=str(exc), kind=type(exc).__name__
                    )
                    await self._idle(stopper, for_work=False)
                    continue
                if stop.is_set():
                    for claim in claimed:
                        await self._release(claim)
                    return
                for claim in claimed:
                    await self._start(claim)
                if claimed:
                    continue  # more may be due right now (if a slot is free)
                await self._idle(stopper, for_work=True)
        finally:
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)

    async def drain(self, grace_s: float) -> None:
        """Let the running claims finish within ``grace_s``, cancel the rest (bounded by
        :data:`STOP_TIMEOUT_S`), and give back those that ended cancelled."""
        if not self._running:
            return
        runs = dict(self._running.values())
        log.info("pool.draining", pool=self.name, running=len(runs), grace_s=grace_s)
        _, pending = await asyncio.wait(runs, timeout=grace_s)
        if not pending:
            return
        for task in pending:
            task.cancel()
        # asyncio.wait, not ``await task``: each task's CancelledError stays its own, and a
        # cancellation of drain() itself still propagates.
        _, stuck = await asyncio.wait(pending, timeout=STOP_TIMEOUT_S)
        for task in stuck:
            log.error("pool.run_did_not_stop", pool=self.name, task=task.get_name())
        for task in pending:
            if task.done() and task.cancelled():
                await self._release(runs[task])

    async def _start(self, claim: C) -> None:
        key = self._source.key(claim)
        if key in self._running:
            # Our own earlier run of this claim lost its lease and is still winding down:
            # never run one claim twice side by side.
            await self._release(claim)
            return
        task = asyncio.create_task(self._run(claim), name=f"{self.name}:{key}")
        self._running[key] = (task, claim)

        def done(finished: asyncio.Task[None]) -> None:
            if self._running.get(key, (None,))[0] is finished:
                del self._running[key]
            self._wake.set()  # a slot is free
            if not finished.cancelled() and finished.exception() is not None:
                # A bug, not a failure of the work (runs record those): log it, keep the
                # loop alive; the claim's lease expires and it is tried again.
                log.error(
                    "pool.run_crashed",
                    pool=self.name,
                    task=finished.get_name(),
                    exc_info=finished.exception(),
                )

        task.add_done_callback(done)

    async def _release(self, claim: C) -> None:
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await self._source.release(claim)
        except (ForgelineError, TimeoutError) as exc:
            # The lease expires on its own; the work is only delayed.
            log.warning("pool.release_failed", pool=self.name, error=str(exc))

    async def _idle(self, stopper: asyncio.Future[Any], *, for_work: bool) -> None:
        # Whichever comes first: stop, a wake-up, work due (while a slot is free), idle_s.
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._wake.wait())}
        if for_work and self.free > 0:
            waiters.add(asyncio.ensure_future(self._source.wait_for_work(self.idle_s)))
        try:
            await asyncio.wait(
                {stopper, *waiters}, timeout=self.idle_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
            # gather, not suppress: a cancel aimed at serve() itself still gets through.
            await asyncio.gather(*waiters, return_exceptions=True)
