"""The WorkQueue contract, run against the SQLite and the PostgreSQL adapter alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from forgeline.adapters.queue import build_queue
from forgeline.adapters.queue.postgres import PostgresWorkQueue
from forgeline.adapters.queue.sqlite import SqliteWorkQueue
from forgeline.adapters.sql.database import Database, PostgresDatabase, SqliteDatabase
from forgeline.adapters.sql.migrate import migrate
from forgeline.domain.backoff import Backoff
from forgeline.domain.errors import (
    CapacityError,
    LeaseLostError,
    TaskNotFoundError,
    TaskStateError,
    ValidationError,
)
from forgeline.domain.task import Lease, TaskStatus
from forgeline.ports.queue import Enqueued, NewTask, WorkQueue
from tests.contract.conftest import Target

Queue = SqliteWorkQueue | PostgresWorkQueue
#: Fast retries, so tests that re-claim a failed task wait only milliseconds.
FAST = Backoff(base_s=0.02, max_s=0.05)


class Opener:
    """Opens queues (and their database handles) on one fresh database; closes them all."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._open: list[tuple[Queue, Database]] = []

    async def __call__(self, backoff: Backoff = FAST) -> Queue:
        db = self.target.handle()
        await db.open()
        await migrate(db)
        queue: Queue = (
            SqliteWorkQueue(db, backoff=backoff)
            if isinstance(db, SqliteDatabase)
            else PostgresWorkQueue(db, backoff=backoff)
        )
        self._open.append((queue, db))
        return queue

    async def aclose(self) -> None:
        for queue, db in reversed(self._open):
            await queue.aclose()
            await db.aclose()


@pytest.fixture
async def opener(target: Target) -> AsyncIterator[Opener]:
    """Opens queues on a fresh database of each dialect."""
    opener = Opener(target)
    try:
        yield opener
    finally:
        await opener.aclose()


@pytest.fixture
async def q(opener: Opener) -> Queue:
    """A queue on a fresh database."""
    return await opener()


async def claim_one(q: WorkQueue, worker: str = "w1", lease_s: float = 30.0) -> Lease:
    leases = await q.claim(worker, lease_s=lease_s)
    assert len(leases) == 1, leases
    return leases[0]


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Poll ``check`` until it holds (for time-based state: backoff, lease expiry)."""
    async with asyncio.timeout(timeout_s):
        # Time-based state (back-off, lease expiry) has no event to await.
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def test_build_queue_picks_the_adapter(tmp_path: Path) -> None:
    """The factory returns the adapter of the database handle's dialect."""
    assert isinstance(build_queue(SqliteDatabase(tmp_path / "x.db")), SqliteWorkQueue)
    assert isinstance(build_queue(PostgresDatabase("postgresql://h/db")), PostgresWorkQueue)


async def test_enqueue_then_get(q: Queue) -> None:
    """An enqueued task is queued with its payload, options and defaults, and can be read."""
    done = await q.enqueue(
        "build", {"prompt": "hi", "n": [1, 2]}, priority=3, max_attempts=5, concurrency_key="p"
    )
    assert done.created
    task = await q.get(done.task.id)
    assert task == done.task
    assert task.status is TaskStatus.QUEUED
    assert task.payload == {"prompt": "hi", "n": [1, 2]}
    assert (task.kind, task.priority, task.max_attempts, task.attempts) == ("build", 3, 5, 0)
    assert task.concurrency_key == "p"
    assert task.lease_token == 0
    assert task.result is None
    assert task.worker is None
    assert not task.cancel_requested
    assert task.created_at.tzinfo is not None
    assert task.run_after <= datetime.now(UTC) + timedelta(seconds=1)


async def test_get_unknown_task(q: Queue) -> None:
    """Reading a task that does not exist raises TaskNotFoundError."""
    with pytest.raises(TaskNotFoundError):
        await q.get("00000000-0000-0000-0000-000000000000")


async def test_idempotency_key_returns_existing(q: Queue) -> None:
    """A second enqueue with the same idempotency key returns the first task, not a new one."""
    first = await q.enqueue("build", {"a": 1}, idempotency_key="req-1")
    again = await q.enqueue("build", {"a": 2}, idempotency_key="req-1")
    assert first.created
    assert not again.created
    assert again.task.id == first.task.id
    assert again.task.payload == {"a": 1}
    assert await q.count(status=TaskStatus.QUEUED) == 1


async def test_request_hash_is_kept_with_the_key(q: Queue) -> None:
    """A task keeps the request hash it was enqueued with; a clash on its idempotency key
    (one by one or in a batch) returns it with the first request's hash, so the caller
    can tell a retry from another request."""
    first = await q.enqueue("build", {"a": 1}, idempotency_key="req-h", request_hash="h1")
    assert first.task.request_hash == "h1"
    assert (await q.get(first.task.id)).request_hash == "h1"
    again = await q.enqueue("build", {"a": 2}, idempotency_key="req-h", request_hash="h2")
    assert (again.created, again.task.id, again.task.request_hash) == (False, first.task.id, "h1")
    batched, fresh = await q.enqueue_many(
        [
            NewTask("build", {}, idempotency_key="req-h", request_hash="h3"),
            NewTask("build", {}, idempotency_key="req-b", request_hash="h4"),
        ]
    )
    assert batched.task.request_hash == "h1"
    assert fresh.task.request_hash == (await q.get(fresh.task.id)).request_hash == "h4"
    found = await q.find_by_idempotency_key("req-h")
    assert found is not None
    assert found.request_hash == "h1"
    assert (await q.enqueue("build", {})).task.request_hash is None


async def test_find_by_idempotency_key(q: Queue) -> None:
    """The task of an idempotency key is found without enqueuing; an unknown key is None."""
    first = await q.enqueue("build", {"a": 1}, idempotency_key="req-9")
    found = await q.find_by_idempotency_key("req-9")
    assert found is not None
    assert found.id == first.task.id
    assert await q.find_by_idempotency_key("nope") is None


async def test_max_queued_holds_under_concurrency(opener: Opener) -> None:
    """Concurrent capped enqueues through two queue objects (two processes' worth of
    connections) queue exactly the cap; the rest get CapacityError. A replay of an accepted
    key gets its task while the key is full; other keys and uncapped enqueues are not held."""
    queues = [await opener(), await opener()]

    async def submit(i: int) -> Enqueued | CapacityError:
        try:
            return await queues[i % 2].enqueue(
                "build", {"i": i}, idempotency_key=f"k{i}", concurrency_key="p", max_queued=5
            )
        except CapacityError as exc:
            return exc

    outcomes = await asyncio.gather(*(submit(i) for i in range(30)))
    accepted = [o for o in outcomes if isinstance(o, Enqueued)]
    assert len(accepted) == 5
    assert all(o.created for o in accepted)
    assert {t.id for t in await queues[0].list(concurrency_key="p")} == {
        o.task.id for o in accepted
    }
    replay = await queues[1].enqueue(
        "build",
        {},
        idempotency_key=accepted[0].task.idempotency_key,
        concurrency_key="p",
        max_queued=5,
    )
    assert not replay.created
    assert replay.task.id == accepted[0].task.id
    with pytest.raises(CapacityError, match="the cap is 5"):
        await queues[0].enqueue("build", {}, concurrency_key="p", max_queued=5)
    assert (await queues[0].enqueue("build", {}, concurrency_key="p")).created
    assert (await queues[0].enqueue("build", {}, concurrency_key="q", max_queued=5)).created
    # Running tasks do not count: a claim makes room for one more.
    await queues[0].claim("w", lease_s=30)
    assert (await queues[1].enqueue("build", {}, concurrency_key="p", max_queued=6)).created


async def test_enqueue_many(q: Queue) -> None:
    """A batch is stored in order; idempotency keys dedupe against the table and the batch."""
    old = await q.enqueue("build", {"i": -1}, idempotency_key="k0")
    batch = [
        NewTask("build", {"i": 0}),
        NewTask("build", {"i": 1}, idempotency_key="k0"),
        NewTask("build", {"i": 2}, idempotency_key="k2", priority=1),
        NewTask("build", {"i": 3}, idempotency_key="k2"),
        NewTask("build", {"i": 4}, concurrency_key="p"),
    ]
    results = await q.enqueue_many(batch)
    assert [r.created for r in results] == [True, False, True, False, True]
    assert results[1].task.id == old.task.id
    assert results[3].task.id == results[2].task.id
    assert [r.task.payload["i"] for r in results] == [0, -1, 2, 2, 4]
    assert await q.enqueue_many([]) == []
    claimed = await q.claim("w", lease_s=30, limit=10)
    # Priority first, then the order of the batch.
    assert [lease.task.payload["i"] for lease in claimed] == [2, -1, 0, 4]


async def test_claim_empty(q: Queue) -> None:
    """Claiming from an empty queue returns no lease."""
    assert await q.claim("w1", lease_s=30) == []


async def test_claim_leases_task(q: Queue) -> None:
    """A claim runs the task under a lease: worker, token, attempt, expiry and start time."""
    done = await q.enqueue("build", {})
    lease = await claim_one(q, "w1", lease_s=30)
    assert lease.task_id == done.task.id
    assert lease.worker == "w1"
    assert lease.token == lease.task.lease_token == 1
    task = await q.get(done.task.id)
    assert task.status is TaskStatus.RUNNING
    assert (task.worker, task.attempts) == ("w1", 1)
    assert task.started_at is not None
    assert task.lease_expires_at is not None
    assert task.lease_expires_at > datetime.now(UTC) + timedelta(seconds=20)
    assert await q.claim("w2", lease_s=30) == []


async def test_claim_order_priority_then_fifo(q: Queue) -> None:
    """Higher priority first; equal priority in enqueue order."""
    ids = [
        (await q.enqueue("build", {"i": i}, priority=p)).task.id for i, p in enumerate([0, 5, 0, 5])
    ]
    order = [(await claim_one(q)).task_id for _ in range(4)]
    assert order == [ids[1], ids[3], ids[0], ids[2]]


async def test_claim_batched(q: Queue) -> None:
    """One claim leases up to ``limit`` tasks, each with its own token."""
    for i in range(7):
        await q.enqueue("build", {"i": i})
    first = await q.claim("w", lease_s=30, limit=5)
    second = await q.claim("w", lease_s=30, limit=5)
    assert [lease.task.payload["i"] for lease in first] == [0, 1, 2, 3, 4]
    assert [lease.task.payload["i"] for lease in second] == [5, 6]
    assert all(lease.token == 1 for lease in first + second)
    assert await q.count(status=TaskStatus.RUNNING) == 7


async def test_claim_respects_run_after(q: Queue) -> None:
    """A task is not claimed before its run_after."""
    await q.enqueue("build", {}, run_after=datetime.now(UTC) + timedelta(hours=1))
    assert await q.claim("w", lease_s=30) == []
    soon = await q.enqueue("build", {}, run_after=datetime.now(UTC) + timedelta(seconds=0.2))
    await eventually(lambda: _claims(q, soon.task.id))


async def _claims(q: Queue, task_id: str) -> bool:
    leases = await q.claim("w", lease_s=30)
    return any(lease.task_id == task_id for lease in leases)


async def test_claim_kinds(q: Queue) -> None:
    """``kinds`` restricts a claim to those task kinds."""
    await q.enqueue("build", {})
    other = await q.enqueue("maintenance", {})
    leases = await q.claim("w", lease_s=30, limit=5, kinds=["maintenance"])
    assert [lease.task_id for lease in leases] == [other.task.id]
    with pytest.raises(ValidationError):
        await q.claim("w", lease_s=30, kinds=[])


async def test_concurrency_key(q: Queue) -> None:
    """At most one running task per key, first in first out within it; keys run in parallel."""
    a1 = await q.enqueue("build", {}, concurrency_key="a")
    a2 = await q.enqueue("build", {}, concurrency_key="a", priority=9)
    b1 = await q.enqueue("build", {}, concurrency_key="b")
    free = await q.enqueue("build", {})
    leases = await q.claim("w", lease_s=30, limit=10)
    assert {lease.task_id for lease in leases} == {a1.task.id, b1.task.id, free.task.id}
    assert await q.claim("w", lease_s=30, limit=10) == []
    a1_lease = next(lease for lease in leases if lease.task_id == a1.task.id)
    await q.complete(a1_lease)
    (next_a,) = await q.claim("w", lease_s=30, limit=10)
    assert next_a.task_id == a2.task.id


async def test_concurrency_key_blocks_behind_a_retry(q: Queue) -> None:
    """A key's oldest task waiting for its retry still blocks the later tasks of that key."""
    first = await q.enqueue("build", {}, concurrency_key="a")
    later = await q.enqueue("build", {}, concurrency_key="a")
    lease = await claim_one(q)
    failed = await q.fail(lease, "flaky", retryable=True)
    assert failed.status is TaskStatus.QUEUED
    await eventually(lambda: _claims(q, first.task.id))
    assert (await q.get(later.task.id)).status is TaskStatus.QUEUED


async def test_heartbeat_extends_lease(q: Queue) -> None:
    """A heartbeat pushes the lease expiry out and reports the task."""
    await q.enqueue("build", {})
    lease = await claim_one(q, lease_s=5)
    task = await q.heartbeat(lease, lease_s=600)
    assert task.status is TaskStatus.RUNNING
    assert not task.cancel_requested
    assert task.lease_expires_at is not None
    assert task.lease_expires_at > datetime.now(UTC) + timedelta(seconds=500)


async def test_complete(q: Queue) -> None:
    """Completing stores the result; a retried complete under the same lease is harmless."""
    await q.enqueue("build", {})
    lease = await claim_one(q)
    task = await q.complete(lease, {"commit": "abc", "n": 1})
    assert task.status is TaskStatus.COMPLETED
    assert task.result == {"commit": "abc", "n": 1}
    assert task.finished_at is not None
    assert task.lease_expires_at is None
    assert (await q.complete(lease, {"commit": "abc", "n": 1})).status is TaskStatus.COMPLETED
    with pytest.raises(LeaseLostError):
        await q.heartbeat(lease, lease_s=30)
    with pytest.raises(LeaseLostError):
        await q.fail(lease, "late", retryable=True)
    assert (await q.get(task.id)).status is TaskStatus.COMPLETED


async def test_fail_retryable_backs_off(opener: Opener) -> None:
    """A retryable failure re-queues the task after an exponential, jittered delay."""
    q = await opener(backoff=Backoff(base_s=100.0, max_s=1000.0))
    await q.enqueue("build", {}, max_attempts=3)
    lease = await claim_one(q)
    before = datetime.now(UTC)
    task = await q.fail(lease, "network down", retryable=True)
    assert task.status is TaskStatus.QUEUED
    assert task.last_error == "network down"
    assert task.worker is None
    assert task.attempts == 1
    assert task.finished_at is None
    delay = (task.run_after - before).total_seconds()
    assert 49 <= delay <= 101, delay
    assert await q.claim("w", lease_s=30) == []


def test_backoff_doubles_with_jitter() -> None:
    """Back-off doubles per attempt up to the cap, with jitter in the upper half."""
    backoff = Backoff(base_s=10.0, max_s=100.0)
    for attempt, nominal in [(1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0), (5, 100.0), (50, 100.0)]:
        delays = {backoff.delay(attempt) for _ in range(50)}
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert len(delays) > 1


async def test_fail_until_dead(q: Queue) -> None:
    """After max_attempts retryable failures the task is failed for good."""
    done = await q.enqueue("build", {}, max_attempts=2)
    lease = await claim_one(q)
    assert (await q.fail(lease, "one", retryable=True)).status is TaskStatus.QUEUED
    await eventually(lambda: _claims(q, done.task.id))
    task = await q.get(done.task.id)
    assert task.attempts == 2
    assert task.lease_token == 2
    second = Lease(
        task=task, worker="w", token=2, expires_at=task.lease_expires_at or task.run_after
    )
    dead = await q.fail(second, "two", retryable=True)
    assert dead.status is TaskStatus.FAILED
    assert dead.last_error == "two"
    assert dead.finished_at is not None
    assert await q.claim("w", lease_s=30) == []


async def test_fail_permanent(q: Queue) -> None:
    """A non-retryable failure is final at once, whatever attempts remain."""
    await q.enqueue("build", {}, max_attempts=5)
    lease = await claim_one(q)
    task = await q.fail(lease, "bad prompt", retryable=False)
    assert task.status is TaskStatus.FAILED
    assert task.attempts == 1
    assert await q.count(status=TaskStatus.FAILED) == 1


async def test_fencing_after_lease_expiry(q: Queue) -> None:
    """A worker whose lease expired and whose task was re-claimed can no longer touch it."""
    done = await q.enqueue("build", {}, max_attempts=3)
    old = await claim_one(q, "w1", lease_s=0.2)
    await eventually(lambda: _recovered(q))
    assert (await q.get(done.task.id)).status is TaskStatus.QUEUED
    new = await claim_one(q, "w2", lease_s=30)
    assert new.token > old.token
    for stale in (
        q.heartbeat(old, lease_s=30),
        q.complete(old, {}),
        q.fail(old, "x", retryable=True),
        q.finish_cancelled(old),
        q.release(old),
    ):
        with pytest.raises(LeaseLostError):
            await stale
    task = await q.complete(new, {"by": "w2"})
    assert task.result == {"by": "w2"}
    assert task.worker == "w2"
    assert task.attempts == 2


async def _recovered(q: Queue) -> bool:
    return await q.recover_expired() > 0


async def test_recover_expired(q: Queue) -> None:
    """Expired leases are recovered, counting the attempt; out of attempts means failed."""
    once = await q.enqueue("build", {}, max_attempts=1)
    twice = await q.enqueue("build", {}, max_attempts=2)
    live = await q.enqueue("build", {})
    await q.claim("dead-worker", lease_s=0.2, limit=2)
    await claim_one(q, "live-worker", lease_s=60)
    await eventually(lambda: _recovered_n(q, 2))
    dead = await q.get(once.task.id)
    assert dead.status is TaskStatus.FAILED
    assert "lease expired" in (dead.last_error or "")
    again = await q.get(twice.task.id)
    assert again.status is TaskStatus.QUEUED
    assert again.attempts == 1
    assert again.worker is None
    assert (await q.get(live.task.id)).status is TaskStatus.RUNNING
    assert await q.recover_expired() == 0


async def _recovered_n(q: Queue, n: int) -> bool:
    # Both short leases were taken together; they expire together.
    got = await q.recover_expired()
    assert got in (0, n)
    return got == n


async def test_cancel_queued(q: Queue) -> None:
    """Cancelling a queued task ends it at once; it is never claimed."""
    done = await q.enqueue("build", {})
    task = await q.cancel(done.task.id)
    assert task.status is TaskStatus.CANCELLED
    assert task.finished_at is not None
    assert await q.claim("w", lease_s=30) == []


async def test_cancel_running(q: Queue) -> None:
    """Cancelling a running task asks its worker to stop; the worker then finishes it cancelled."""
    done = await q.enqueue("build", {})
    lease = await claim_one(q)
    task = await q.cancel(done.task.id)
    assert task.status is TaskStatus.RUNNING
    assert task.cancel_requested
    assert (await q.cancel(done.task.id)).cancel_requested  # asking twice is harmless
    assert (await q.heartbeat(lease, lease_s=30)).cancel_requested
    assert await q.wait_for_cancel(done.task.id, 0.5)
    ended = await q.finish_cancelled(lease, {"output": "stopped"})
    assert ended.status is TaskStatus.CANCELLED
    assert ended.result == {"output": "stopped"}


async def test_cancel_final_or_unknown(q: Queue) -> None:
    """Cancelling a finished task is a state conflict; an unknown one is not found."""
    done = await q.enqueue("build", {})
    await q.complete(await claim_one(q))
    with pytest.raises(TaskStateError):
        await q.cancel(done.task.id)
    with pytest.raises(TaskNotFoundError):
        await q.cancel("no-such-task")


async def test_cancel_requested_failure_is_not_retried(q: Queue) -> None:
    """A retryable failure of a task whose cancel was requested is final."""
    done = await q.enqueue("build", {}, max_attempts=5)
    lease = await claim_one(q)
    await q.cancel(done.task.id)
    assert (await q.fail(lease, "killed", retryable=True)).status is TaskStatus.FAILED


async def test_wait_for_cancel_from_another_process(opener: Opener) -> None:
    """A worker waiting on a task learns of a cancel made elsewhere within a second."""
    worker, api = await opener(), await opener()
    done = await api.enqueue("build", {})
    await claim_one(worker)
    waiting = asyncio.create_task(worker.wait_for_cancel(done.task.id, 1.0), name="waiter")
    await asyncio.sleep(0.1)  # the waiter has read "not requested" and sleeps
    await api.cancel(done.task.id)
    assert await waiting


async def test_wait_for_cancel_times_out(q: Queue) -> None:
    """Without a cancel, wait_for_cancel returns False after its timeout; unknown ids raise."""
    done = await q.enqueue("build", {})
    await claim_one(q)
    assert await q.wait_for_cancel(done.task.id, 0.2) is False
    with pytest.raises(TaskNotFoundError):
        await q.wait_for_cancel("no-such-task", 0.2)


async def test_wait_for_work_wakes_on_enqueue(opener: Opener) -> None:
    """An idle worker (claim, else wait_for_work) takes work enqueued by another process."""
    worker, api = await opener(), await opener()

    async def idle_worker() -> Lease:
        while not (leases := await worker.claim("w", lease_s=30)):
            await worker.wait_for_work(30.0)
        return leases[0]

    running = asyncio.create_task(idle_worker(), name="idle-worker")
    await asyncio.sleep(0.3)
    assert not running.done()
    done = await api.enqueue("build", {})
    lease = await asyncio.wait_for(running, 2.0)
    assert lease.task_id == done.task.id


async def test_wait_for_work_times_out(q: Queue) -> None:
    """With nothing to do, wait_for_work returns after its timeout."""
    assert await q.claim("w", lease_s=30) == []
    await asyncio.wait_for(q.wait_for_work(0.2), 5.0)


async def test_release(q: Queue) -> None:
    """Releasing gives the task back without counting the attempt; if cancel was asked, it ends."""
    keep = await q.enqueue("build", {})
    stop = await q.enqueue("build", {})
    leases = await q.claim("w", lease_s=30, limit=2)
    await q.cancel(stop.task.id)
    released = {lease.task_id: await q.release(lease) for lease in leases}
    assert released[keep.task.id].status is TaskStatus.QUEUED
    assert released[keep.task.id].attempts == 0
    assert released[stop.task.id].status is TaskStatus.CANCELLED
    again = await claim_one(q, "w2")
    assert again.task_id == keep.task.id
    assert again.token == 2
    assert again.task.attempts == 1


async def test_recover_cancel_requested(q: Queue) -> None:
    """A task whose worker died after a cancel request ends cancelled, not re-queued."""
    done = await q.enqueue("build", {})
    await claim_one(q, lease_s=0.2)
    await q.cancel(done.task.id)
    await eventually(lambda: _recovered(q))
    assert (await q.get(done.task.id)).status is TaskStatus.CANCELLED


async def test_list_and_count(q: Queue) -> None:
    """list filters by status, kind and key, newest first; count counts by status and key."""
    a = await q.enqueue("build", {}, concurrency_key="a")
    b = await q.enqueue("build", {}, concurrency_key="b")
    c = await q.enqueue("other", {}, concurrency_key="a")
    d = await q.enqueue("build", {}, concurrency_key="a")
    await q.cancel(c.task.id)
    assert [t.id for t in await q.list()] == [d.task.id, c.task.id, b.task.id, a.task.id]
    assert [t.id for t in await q.list(limit=2)] == [d.task.id, c.task.id]
    assert [t.id for t in await q.list(status=TaskStatus.QUEUED, concurrency_key="a")] == [
        d.task.id,
        a.task.id,
    ]
    assert [t.id for t in await q.list(kind="other")] == [c.task.id]
    assert await q.count(status=TaskStatus.QUEUED) == 3
    assert await q.count(status=TaskStatus.QUEUED, concurrency_key="a") == 2
    assert await q.count(status=TaskStatus.CANCELLED, concurrency_key="b") == 0


async def test_list_pages_by_cursor_keys_and_time(q: Queue) -> None:
    """list pages newest first from a position (the last task's seq), matches any of several
    keys, and keeps tasks created at or after ``since``."""
    ids = [(await q.enqueue("build", {}, concurrency_key=k)).task.id for k in "abcab"]
    newest_first = ids[::-1]
    first = await q.list(limit=2)
    assert [t.id for t in first] == newest_first[:2]
    second = await q.list(limit=2, before=first[-1].seq)
    assert [t.id for t in second] == newest_first[2:4]
    assert [t.id for t in await q.list(limit=2, before=second[-1].seq)] == newest_first[4:]
    assert await q.list(before=1) == []
    assert [t.id for t in await q.list(concurrency_keys=["a", "c"])] == [ids[3], ids[2], ids[0]]
    assert await q.list(concurrency_keys=[]) == []
    oldest = (await q.get(ids[0])).created_at
    assert len(await q.list(since=oldest)) == 5
    assert await q.list(since=datetime.now(UTC) + timedelta(hours=1)) == []
    with pytest.raises(ValidationError):
        await q.list(since=datetime(2030, 1, 1))  # noqa: DTZ001  # naive on purpose


async def test_invalid_input(q: Queue) -> None:
    """Arguments that can never work raise ValidationError before touching the database."""
    with pytest.raises(ValidationError):
        await q.enqueue("build", {}, max_attempts=0)
    with pytest.raises(ValidationError):
        await q.enqueue("", {})
    with pytest.raises(ValidationError):
        await q.enqueue("build", {"x": object()})
    with pytest.raises(ValidationError):
        await q.enqueue("build", {}, run_after=datetime(2030, 1, 1))  # noqa: DTZ001  # naive on purpose
    with pytest.raises(ValidationError):
        await q.claim("w", lease_s=0)
    with pytest.raises(ValidationError):
        await q.claim("w", lease_s=30, limit=0)
    with pytest.raises(ValidationError):
        await q.list(limit=0)
    with pytest.raises(ValidationError):
        await q.enqueue("build", {}, max_queued=1)  # nothing to count without a key
    with pytest.raises(ValidationError):
        await q.enqueue("build", {}, concurrency_key="p", max_queued=0)


async def test_concurrent_claimers_never_share_a_task(opener: Opener) -> None:
    """Many claimers on two connections' worth of queues each get distinct tasks."""
    queues = [await opener(), await opener()]
    await queues[0].enqueue_many([NewTask("build", {"i": i}) for i in range(120)])
    seen: list[str] = []

    async def drain(q: Queue, name: str) -> None:
        while leases := await q.claim(name, lease_s=30, limit=3):
            for lease in leases:
                seen.append(lease.task_id)
                await q.complete(lease)

    await asyncio.gather(*(drain(queues[i % 2], f"w{i}") for i in range(6)))
    assert len(seen) == 120
    assert len(set(seen)) == 120
    assert await queues[1].count(status=TaskStatus.COMPLETED) == 120


async def test_concurrent_completes_with_a_stale_lease(q: Queue) -> None:
    """Completions made together all commit, except the one whose lease is stale."""
    await q.enqueue_many([NewTask("build", {"i": i}) for i in range(5)])
    leases = await q.claim("w", lease_s=30, limit=5)
    stale = leases[0]
    await q.release(stale)
    await claim_one(q, "w2")  # the released task is someone else's now
    outcomes = await asyncio.gather(
        *(q.complete(lease, {"i": lease.task.payload["i"]}) for lease in leases),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], LeaseLostError)
    for lease, outcome in zip(leases[1:], outcomes[1:], strict=True):
        assert not isinstance(outcome, BaseException)
        assert outcome.status is TaskStatus.COMPLETED
        assert outcome.result == {"i": lease.task.payload["i"]}
    assert await q.count(status=TaskStatus.COMPLETED) == 4
    assert (await q.get(stale.task_id)).status is TaskStatus.RUNNING


async def test_migrations_are_idempotent(opener: Opener) -> None:
    """Opening a second queue on a migrated database applies nothing new and sees the tasks."""
    first = await opener()
    done = await first.enqueue("build", {})
    second = await opener()
    assert (await second.get(done.task.id)).id == done.task.id
