"""The WorkQueue port: durable, leased, fenced work items."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from forgeline.domain.task import Lease, TaskStatus, WorkTask


@dataclass(frozen=True, slots=True)
class NewTask:
    """One task to add with :meth:`WorkQueue.enqueue_many` (the arguments of ``enqueue``)."""

    kind: str
    payload: Mapping[str, Any]
    priority: int = 0
    run_after: datetime | None = None
    max_attempts: int = 3
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    request_hash: str | None = None


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What :meth:`WorkQueue.enqueue` did: the task, and whether it is new."""

    task: WorkTask
    created: bool


class WorkQueue(Protocol):
    """A queue whose tasks survive crashes and run exactly once to completion.

    - ``enqueue`` with an ``idempotency_key`` already used returns the existing task
      (``created=False``); ``enqueue_many`` does the same for many tasks in one round trip
      and one transaction. Enqueueing wakes idle workers (``wait_for_work``). A task keeps
      the ``request_hash`` it was enqueued with (a digest of the request that made it),
      so the caller can tell a retry from another request reusing the key.
    - ``enqueue(max_queued=N)`` refuses with ``CapacityError`` when ``N`` tasks of its
      ``concurrency_key`` are queued already. The count and the insert are one atomic step
      against every other capped enqueue of the key, in every process: concurrent callers
      never queue more than ``N``. The idempotency key is looked at first, so a retry of an
      accepted task gets it back even when the key is full.
    - ``claim`` returns up to ``limit`` eligible tasks (``queued``, ``run_after`` passed,
      no other ``running`` task with the same ``concurrency_key``; first in, first out
      within a key; higher priority first), each leased to ``worker`` for ``lease_s``
      seconds with a fresh fencing token (``attempts`` counts the claim). It returns an
      empty list when nothing is eligible. Within a key the order is strict: the key's
      oldest queued task blocks the later ones, even while it waits for a retry.
    - ``heartbeat``, ``complete`` and ``fail`` take the :class:`Lease`; if the lease is no
      longer the task's current one (expired and re-claimed), they raise ``LeaseLostError``.
      ``heartbeat`` extends the lease and returns the task, whose ``cancel_requested``
      tells the worker to stop. ``complete`` returns once the result is committed
      (concurrent calls may share one commit).
    - ``fail(retryable=True)`` re-queues with exponential backoff and jitter until
      ``max_attempts``; then, or with ``retryable=False``, or once cancel was requested,
      the task is ``failed`` for good.
    - ``cancel`` ends a queued task at once (``cancelled``) and marks a running one
      ``cancel_requested``; the worker learns it at its next heartbeat or through
      :meth:`wait_for_cancel`, within a second. Cancelling a final task raises
      ``TaskStateError``.
    - ``release`` gives a running task back without counting the attempt (worker shutdown);
      a released task whose cancel was requested becomes ``cancelled``.
    - ``recover_expired`` puts tasks whose lease ran out back in the queue (the lost attempt
      counts: past ``max_attempts`` the task is ``failed``; one whose cancel was requested is
      ``cancelled``) and returns how many it changed. Workers call it every few seconds;
      it is cheap when nothing expired.
    - Transient connection failures (a database restart) are retried inside the adapter
      for a bounded time; retried writes are idempotent (a retried ``complete`` of a task
      already completed under the same lease returns it).
    - ``wait_for_work`` may return early (a wake-up means "claim again", not "a task is
      yours"); workers loop on claim, then wait. Every wait is bounded by its ``timeout_s``.
    - Arguments that can never work raise ``ValidationError``; database errors surface as
      ``StorageError``; unknown task ids raise ``TaskNotFoundError``.
    """

    async def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        priority: int = 0,
        run_after: datetime | None = None,
        max_attempts: int = 3,
        idempotency_key: str | None = None,
        concurrency_key: str | None = None,
        max_queued: int | None = None,
        request_hash: str | None = None,
    ) -> Enqueued:
        """Add a task (or return the one with the same idempotency key); with
        ``max_queued``, only while fewer tasks of ``concurrency_key`` are queued."""
        ...

    async def enqueue_many(self, tasks: Sequence[NewTask]) -> list[Enqueued]:
        """Add many tasks at once; results in the order of ``tasks``."""
        ...

    async def claim(
        self,
        worker: str,
        *,
        lease_s: float,
        limit: int = 1,
        kinds: Sequence[str] | None = None,
    ) -> list[Lease]:
        """Lease up to ``limit`` eligible tasks to ``worker`` in one statement.

        At most one task per concurrency key is leased, and only the oldest queued one of
        its key, when no task of that key is running. ``kinds`` restricts the task kinds.
        """
        ...

    async def heartbeat(self, lease: Lease, *, lease_s: float) -> WorkTask:
        """Extend the lease; the returned task says whether cancel was requested."""
        ...

    async def complete(self, lease: Lease, result: Mapping[str, Any] | None = None) -> WorkTask:
        """Mark the task completed with an optional result."""
        ...

    async def fail(
        self,
        lease: Lease,
        error: str,
        *,
        retryable: bool,
        result: Mapping[str, Any] | None = None,
    ) -> WorkTask:
        """Record a failed attempt: re-queue with backoff, or fail for good. ``result``
        (what the attempt produced, e.g. the agent's output) is kept with the task."""
        ...

    async def finish_cancelled(
        self, lease: Lease, result: Mapping[str, Any] | None = None
    ) -> WorkTask:
        """The worker stopped a task whose cancel was requested: mark it ``cancelled``."""
        ...

    async def release(self, lease: Lease) -> WorkTask:
        """Give a running task back to the queue without counting an attempt (shutdown)."""
        ...

    async def cancel(self, task_id: str) -> WorkTask:
        """Cancel a queued task now, or ask the worker of a running one to stop."""
        ...

    async def get(self, task_id: str) -> WorkTask:
        """The task, or ``TaskNotFoundError``."""
        ...

    async def find_by_idempotency_key(self, idempotency_key: str) -> WorkTask | None:
        """The task enqueued with that idempotency key, or None."""
        ...

    async def list(
        self,
        *,
        status: TaskStatus | None = None,
        kind: str | None = None,
        concurrency_key: str | None = None,
        concurrency_keys: Collection[str] | None = None,
        since: datetime | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[WorkTask]:
        """Tasks matching every given filter, newest first: of ``concurrency_key``, of any
        of ``concurrency_keys``, created at or after ``since``, enqueued before the
        position ``before`` (the ``seq`` of the last task of the page before)."""
        ...

    async def count(self, *, status: TaskStatus, concurrency_key: str | None = None) -> int:
        """How many tasks are in ``status`` (for caps and metrics)."""
        ...

    async def recover_expired(self) -> int:
        """Re-queue tasks whose lease expired; how many."""
        ...

    async def wait_for_work(self, timeout_s: float) -> None:
        """Return when work may be available, or after ``timeout_s``."""
        ...

    async def wait_for_cancel(self, task_id: str, timeout_s: float) -> bool:
        """Return True as soon as cancel of ``task_id`` is requested, False after ``timeout_s``."""
        ...

    async def aclose(self) -> None:
        """Close connections; idempotent."""
        ...
