"""The PostgreSQL work queue: workers on many machines, one database.

- Claims lease up to ``limit`` tasks in one ``UPDATE … FROM (SELECT … FOR UPDATE SKIP
  LOCKED)`` statement, like procrastinate's ``fetch_job`` but batched like pgqueuer: one
  round trip hands a worker all the tasks its free slots can take.
- Wake-ups come by LISTEN/NOTIFY on the process's one listening connection
  (:class:`~forgeline.adapters.sql.listen.Listener`: ``forgeline_work`` from an insert
  trigger and from writes that make work eligible; ``forgeline_cancel`` carrying the task
  id). The listener reconnects on its own; while it is down, and after it comes back
  (notifications may have been missed), waits fall back to polling.
- A database restart breaks the pool's connections: every operation is retried on
  connection-level errors (:meth:`PostgresDatabase.run`), and every write is safe to
  retry (client-chosen task ids; fenced writes recognise their own earlier success).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row

from forgeline.adapters.queue._common import (
    MAX_CLAIM,
    MAX_LIST,
    check_lease_s,
    check_limit,
    check_max_queued,
    check_new_task,
    check_room,
    check_since,
    dump_json,
    kinds_list,
    new_task_id,
    task_from_row,
)
from forgeline.adapters.sql import queries
from forgeline.adapters.sql.database import PostgresDatabase
from forgeline.domain.backoff import Backoff
from forgeline.domain.errors import (
    ForgelineError,
    LeaseLostError,
    StorageError,
    TaskNotFoundError,
    TaskStateError,
)
from forgeline.domain.task import Lease, TaskStatus, WorkTask
from forgeline.ports.queue import Enqueued, NewTask

if TYPE_CHECKING:
    Conn = psycopg.AsyncConnection[tuple[object, ...]]

T = TypeVar("T")

WORK_CHANNEL = "forgeline_work"
#: Most completions one statement carries.
MAX_BATCH = 500
CANCEL_CHANNEL = "forgeline_cancel"

_SQL = queries.load("forgeline.adapters.queue.sql", "postgres")

# What a fenced write leaves its task in (to recognise a retry of a committed write).
_COMPLETED = frozenset({TaskStatus.COMPLETED})
_CANCELLED = frozenset({TaskStatus.CANCELLED})
_REQUEUED_OR_FAILED = frozenset({TaskStatus.QUEUED, TaskStatus.FAILED})
_REQUEUED_OR_CANCELLED = frozenset({TaskStatus.QUEUED, TaskStatus.CANCELLED})


def _new_task(task_id: str, new: NewTask, row: DictRow) -> WorkTask:
    """A task just inserted, from what was sent and the columns the database chose."""
    return WorkTask(
        id=task_id,
        seq=row["seq"],
        kind=new.kind,
        payload=dict(new.payload),
        status=TaskStatus.QUEUED,
        priority=new.priority,
        attempts=0,
        max_attempts=new.max_attempts,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        run_after=row["run_after"],
        concurrency_key=new.concurrency_key,
        idempotency_key=new.idempotency_key,
        request_hash=new.request_hash,
    )


@dataclass(frozen=True, slots=True)
class _Completion:
    lease: Lease
    result: str | None


class _CompletionBatcher:
    """Group commit for ``complete``: calls made while a flush is in flight go together in
    the next one, as one statement and one commit.

    No call waits for company: the first flush starts on the next turn of the event loop.
    Under load (many slots finishing together) a batch carries many completions and the
    database commits once for all, which is where a queue of short tasks spends its time.
    Every caller still returns only after its own row is committed.
    """

    def __init__(
        self, flush: Callable[[list[_Completion]], Awaitable[list[WorkTask | BaseException]]]
    ) -> None:
        self._flush = flush
        self._pending: list[tuple[_Completion, asyncio.Future[WorkTask]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: _Completion) -> WorkTask:
        future: asyncio.Future[WorkTask] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="forgeline-queue-completions")
        # Shielded: a cancelled caller does not cancel the flush others wait on too.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    outcomes = await self._flush([item for item, _ in batch])
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._task = None

    async def aclose(self) -> None:
        """Let the flush under way finish (its callers are waiting for it)."""
        task = self._task
        if task is not None:
            with contextlib.suppress(Exception):
                await task


class PostgresWorkQueue:
    """:class:`~forgeline.ports.queue.WorkQueue` on a shared :class:`PostgresDatabase`."""

    def __init__(
        self,
        db: PostgresDatabase,
        *,
        backoff: Backoff | None = None,
        poll_interval_s: float = 0.5,
        listen_poll_interval_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        """``poll_interval_s`` applies while the listener is down; ``listen_poll_interval_s``
        is the safety-net poll while it is up."""
        self._db = db
        self._backoff = backoff or Backoff()
        self._poll_s = poll_interval_s
        self._listen_poll_s = listen_poll_interval_s
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not cryptography
        self._listener = db.listener
        self._unsubscribe = db.listener.subscribe(
            {WORK_CHANNEL: self._notify_work, CANCEL_CHANNEL: self._notify_cancel}, self._wake_all
        )
        # Work notifications: a counter and an event replaced at each notification, so a
        # waiter sees every notification after the last claim that came back short.
        self._work_seq = 0
        self._seen_seq = -1
        self._work_event = asyncio.Event()
        self._cancel_waiters: dict[str, set[asyncio.Event]] = {}
        self._completions = _CompletionBatcher(self._complete_batch)
        self._closed = False

    # -- notifications --------------------------------------------------------------------

    def _notify_work(self, _payload: str = "") -> None:
        self._work_seq += 1
        self._work_event.set()
        self._work_event = asyncio.Event()

    def _notify_cancel(self, task_id: str) -> None:
        for event in self._cancel_waiters.get(task_id, ()):
            event.set()

    def _wake_all(self) -> None:
        self._notify_work()
        for events in self._cancel_waiters.values():
            for event in events:
                event.set()

    def _wait_s(self) -> float:
        return self._listen_poll_s if self._listener.connected else self._poll_s

    # -- plumbing -------------------------------------------------------------------------

    async def _run(
        self,
        op: Callable[[Conn], Awaitable[T]],
        what: str,
        *,
        retry_on: tuple[type[Exception], ...] = (),
    ) -> T:
        """Run ``op`` through :meth:`PostgresDatabase.run`: connection failures are retried
        (every write here is safe to repeat)."""
        if self._closed:
            raise StorageError("the work queue is closed")
        return await self._db.run(op, f"queue {what}", retry_on=retry_on)

    @staticmethod
    async def _rows(
        conn: Conn, query: str | sql.Composed, params: Mapping[str, Any]
    ) -> list[DictRow]:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            return await cur.fetchall()

    async def _fetch(self, conn: Conn, task_id: str) -> WorkTask:
        rows = await self._rows(conn, _SQL["get_task"], {"id": task_id})
        if not rows:
            raise TaskNotFoundError(task_id)
        return task_from_row(rows[0])

    async def _fenced(
        self,
        lease: Lease,
        name: str,
        params: Mapping[str, Any],
        *,
        done: frozenset[TaskStatus] = frozenset(),
    ) -> WorkTask:
        """A write that only applies while ``lease`` is current; else ``LeaseLostError``.

        ``done`` holds the statuses this write leaves a task in: finding the task already so
        under the same token means a retry of this very write (its first try committed but
        the answer was lost with the connection), which is not an error.
        """

        async def op(conn: Conn) -> WorkTask:
            rows = await self._rows(
                conn, _SQL[name], {**params, "id": lease.task_id, "token": lease.token}
            )
            if rows:
                task = task_from_row(rows[0])
                if task.concurrency_key is not None and task.status is not TaskStatus.RUNNING:
                    # The key is free: the next task of the key may run now.
                    await conn.execute(_SQL["notify_work"])
                elif task.status is TaskStatus.QUEUED:
                    await conn.execute(_SQL["notify_work"])
                return task
            task = await self._fetch(conn, lease.task_id)
            if task.status in done and task.lease_token == lease.token:
                return task
            raise LeaseLostError(lease.task_id, lease.token)

        return await self._run(op, name)

    # -- the port -------------------------------------------------------------------------

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
        """Add a task (or return the one with the same idempotency key): one round trip.

        With ``max_queued``, a transaction that first takes the key's advisory lock, so
        that its count and insert see every other capped enqueue of the key committed.
        """
        check_max_queued(max_queued, concurrency_key)
        new = check_new_task(
            NewTask(
                kind,
                payload,
                priority,
                run_after,
                max_attempts,
                idempotency_key,
                concurrency_key,
                request_hash,
            )
        )
        task_id = new_task_id()
        params = {
            "id": task_id,
            "kind": kind,
            "payload": dump_json(payload, "payload"),
            "priority": priority,
            "max_attempts": max_attempts,
            "run_after": run_after,
            "concurrency_key": concurrency_key,
            "idempotency_key": idempotency_key,
            "request_hash": request_hash,
        }

        async def existing(conn: Conn) -> Enqueued | None:
            rows = await self._rows(
                conn, _SQL["get_existing"], {"ids": [task_id], "keys": [idempotency_key]}
            )
            # Our own id means a retried insert whose first try committed: ours, created.
            mine = [r for r in rows if r["id"] == task_id]
            return Enqueued(task_from_row((mine or rows)[0]), created=bool(mine)) if rows else None

        async def insert(conn: Conn) -> Enqueued:
            rows = await self._rows(conn, _SQL["insert_task"], params)
            if rows:
                return Enqueued(_new_task(task_id, new, rows[0]), created=True)
            found = await existing(conn)
            if found is None:  # a clash needs a row, and nothing deletes tasks
                raise StorageError("enqueue: the clashing task vanished")
            return found

        if max_queued is None or concurrency_key is None:
            return await self._run(insert, "enqueue")

        async def capped(conn: Conn) -> Enqueued:
            async with conn.transaction():
                await conn.execute(_SQL["lock_concurrency_key"], params)
                found = await existing(conn)  # a replay adds nothing: no cap for it
                if found is not None:
                    return found
                (row,) = await self._rows(conn, _SQL["count_queued"], params)
                check_room(row["n"], max_queued, concurrency_key)
                return await insert(conn)

        return await self._run(capped, "enqueue")

    async def enqueue_many(self, tasks: Sequence[NewTask]) -> list[Enqueued]:
        """Add many tasks in one statement; results in the order of ``tasks``."""
        if not tasks:
            return []
        for task in tasks:
            check_new_task(task)
        ids = [new_task_id() for _ in tasks]
        params = {
            "ids": ids,
            "kinds": [t.kind for t in tasks],
            "payloads": [dump_json(t.payload, "payload") for t in tasks],
            "priorities": [t.priority for t in tasks],
            "max_attempts": [t.max_attempts for t in tasks],
            "run_afters": [t.run_after for t in tasks],
            "concurrency_keys": [t.concurrency_key for t in tasks],
            "idempotency_keys": [t.idempotency_key for t in tasks],
            "request_hashes": [t.request_hash for t in tasks],
        }

        async def op(conn: Conn) -> list[Enqueued]:
            inserted = {r["id"]: r for r in await self._rows(conn, _SQL["insert_tasks"], params)}
            existing: dict[str, DictRow] = {}  # by id and by idempotency key
            missing = [i for i in ids if i not in inserted]
            if missing:
                keys = [t.idempotency_key for t in tasks if t.idempotency_key is not None]
                for row in await self._rows(
                    conn, _SQL["get_existing"], {"ids": missing, "keys": keys}
                ):
                    existing[row["id"]] = row
                    if row["idempotency_key"] is not None:
                        existing[row["idempotency_key"]] = row
            out: list[Enqueued] = []
            for task_id, task in zip(ids, tasks, strict=True):
                if task_id in inserted:
                    out.append(Enqueued(_new_task(task_id, task, inserted[task_id]), created=True))
                elif task_id in existing:  # a retry whose first try committed: ours
                    out.append(Enqueued(task_from_row(existing[task_id]), created=True))
                else:  # only an idempotency-key clash leaves a task out
                    out.append(
                        Enqueued(task_from_row(existing[task.idempotency_key or ""]), created=False)
                    )
            return out

        return await self._run(op, "enqueue_many")

    async def claim(
        self,
        worker: str,
        *,
        lease_s: float,
        limit: int = 1,
        kinds: Sequence[str] | None = None,
    ) -> list[Lease]:
        """Lease up to ``limit`` eligible tasks to ``worker`` in one statement."""
        check_lease_s(lease_s)
        check_limit(limit, MAX_CLAIM)
        # Listen before the first claim, so work enqueued after an empty claim wakes us.
        await self._listener.start(wait_s=0)
        params = {"worker": worker, "lease_s": lease_s, "limit": limit, "kinds": kinds_list(kinds)}
        seq_before = self._work_seq

        async def op(conn: Conn) -> list[DictRow]:
            return await self._rows(conn, _SQL["claim"], params)

        # A claim racing another on a concurrency key may trip the unique index of running
        # keys; tried again, it sees the other claim committed.
        rows = await self._run(op, "claim", retry_on=(psycopg.errors.UniqueViolation,))
        if len(rows) < limit:
            self._seen_seq = seq_before
        tasks = sorted((task_from_row(r) for r in rows), key=lambda t: (-t.priority, t.created_at))
        return [
            Lease(task=t, worker=worker, token=t.lease_token, expires_at=t.lease_expires_at)  # type: ignore[arg-type]  # set by claim
            for t in tasks
        ]

    async def heartbeat(self, lease: Lease, *, lease_s: float) -> WorkTask:
        """Extend the lease; the returned task says whether cancel was requested."""
        check_lease_s(lease_s)
        return await self._fenced(lease, "heartbeat", {"lease_s": lease_s})

    async def complete(self, lease: Lease, result: Mapping[str, Any] | None = None) -> WorkTask:
        """Mark the task completed with an optional result (group-committed, see
        :class:`_CompletionBatcher`); returns once it is committed."""
        return await self._completions.submit(_Completion(lease, dump_json(result, "result")))

    async def _complete_batch(self, batch: list[_Completion]) -> list[WorkTask | BaseException]:
        params = {
            "ids": [c.lease.task_id for c in batch],
            "tokens": [c.lease.token for c in batch],
            "results": [c.result for c in batch],
        }

        async def op(conn: Conn) -> dict[str, WorkTask]:
            rows = await self._rows(conn, _SQL["complete_many"], params)
            done = {r["id"]: task_from_row(r) for r in rows}
            if any(t.concurrency_key is not None for t in done.values()):
                await conn.execute(_SQL["notify_work"])  # their keys are free again
            return done

        done = await self._run(op, "complete")
        outcomes: list[WorkTask | BaseException] = []
        for item in batch:
            task = done.get(item.lease.task_id)
            if task is not None and task.lease_token == item.lease.token:
                outcomes.append(task)
                continue
            # Not completed now: lease lost, or completed by an earlier try of this call.
            try:
                outcomes.append(
                    await self._fenced(
                        item.lease, "complete", {"result": item.result}, done=_COMPLETED
                    )
                )
            except ForgelineError as exc:
                outcomes.append(exc)
        return outcomes

    async def finish_cancelled(
        self, lease: Lease, result: Mapping[str, Any] | None = None
    ) -> WorkTask:
        """The worker stopped the task: mark it ``cancelled``."""
        params = {"result": dump_json(result, "result")}
        return await self._fenced(lease, "finish_cancelled", params, done=_CANCELLED)

    async def fail(
        self,
        lease: Lease,
        error: str,
        *,
        retryable: bool,
        result: Mapping[str, Any] | None = None,
    ) -> WorkTask:
        """Record a failed attempt: re-queue with back-off, or fail for good."""
        params = {
            "error": error,
            "result": dump_json(result, "result"),
            "retryable": retryable,
            "delay_s": self._backoff.delay(lease.task.attempts, self._rng),
        }
        return await self._fenced(lease, "fail", params, done=_REQUEUED_OR_FAILED)

    async def release(self, lease: Lease) -> WorkTask:
        """Give a running task back to the queue without counting an attempt."""
        return await self._fenced(lease, "release", {}, done=_REQUEUED_OR_CANCELLED)

    async def cancel(self, task_id: str) -> WorkTask:
        """Cancel a queued task now, or ask the worker of a running one to stop."""

        async def op(conn: Conn) -> WorkTask:
            for name in ("cancel_queued", "cancel_running"):
                rows = await self._rows(conn, _SQL[name], {"id": task_id})
                if rows:
                    return task_from_row(rows[0])
            task = await self._fetch(conn, task_id)
            if task.status is TaskStatus.RUNNING:  # finished between our two statements
                return task
            raise TaskStateError(task_id, task.status.value, "cancel")

        return await self._run(op, "cancel")

    async def get(self, task_id: str) -> WorkTask:
        """The task, or ``TaskNotFoundError``."""
        return await self._run(lambda conn: self._fetch(conn, task_id), "get")

    async def find_by_idempotency_key(self, idempotency_key: str) -> WorkTask | None:
        """The task enqueued with that idempotency key, or None."""

        async def op(conn: Conn) -> WorkTask | None:
            rows = await self._rows(
                conn, _SQL["get_task_by_idempotency_key"], {"idempotency_key": idempotency_key}
            )
            return task_from_row(rows[0]) if rows else None

        return await self._run(op, "find_by_idempotency_key")

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
        """Tasks matching every given filter, newest first."""
        check_limit(limit, MAX_LIST)
        check_since(since)
        clauses, params = _filters(status=status, kind=kind, concurrency_key=concurrency_key)
        if concurrency_keys is not None:
            clauses.append(sql.SQL("concurrency_key = any(%(keys)s::text[])"))
            params["keys"] = list(concurrency_keys)
        if since is not None:
            clauses.append(sql.SQL("created_at >= %(since)s"))
            params["since"] = since
        if before is not None:
            clauses.append(sql.SQL("seq < %(before)s"))
            params["before"] = before
        query = sql.SQL("select * from tasks{} order by seq desc limit %(limit)s").format(
            _where(clauses)
        )

        async def op(conn: Conn) -> list[WorkTask]:
            return [
                task_from_row(r) for r in await self._rows(conn, query, {**params, "limit": limit})
            ]

        return await self._run(op, "list")

    async def count(self, *, status: TaskStatus, concurrency_key: str | None = None) -> int:
        """How many tasks are in ``status``."""
        clauses, params = _filters(status=status, concurrency_key=concurrency_key)
        query = sql.SQL("select count(*) as n from tasks{}").format(_where(clauses))

        async def op(conn: Conn) -> int:
            return int((await self._rows(conn, query, params))[0]["n"])

        return await self._run(op, "count")

    async def recover_expired(self) -> int:
        """Re-queue tasks whose lease expired; how many changed."""

        async def op(conn: Conn) -> int:
            rows = await self._rows(conn, _SQL["recover_expired"], {})
            if rows:
                await conn.execute(_SQL["notify_work"])
            return len(rows)

        return await self._run(op, "recover_expired")

    async def wait_for_work(self, timeout_s: float) -> None:
        """Return on a work notification, or a poll that finds due work, or after ``timeout_s``.

        A notification that arrived since the last claim that came back short counts: the
        worker would otherwise sleep through work enqueued between its claim and this call.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        await self._listener.start(wait_s=min(1.0, max(0.0, timeout_s)))
        while True:
            if self._work_seq != self._seen_seq:
                self._seen_seq = self._work_seq
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            event = self._work_event
            try:
                await asyncio.wait_for(event.wait(), min(self._wait_s(), remaining))
            except TimeoutError:
                if await self._run(self._has_work, "wait_for_work"):
                    return

    async def _has_work(self, conn: Conn) -> bool:
        cur = await conn.execute(_SQL["has_work"])
        row = await cur.fetchone()
        return bool(row and row[0])

    async def wait_for_cancel(self, task_id: str, timeout_s: float) -> bool:
        """True as soon as cancel of ``task_id`` is requested, False after ``timeout_s``."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        await self._listener.start(wait_s=min(1.0, max(0.0, timeout_s)))
        event = asyncio.Event()
        self._cancel_waiters.setdefault(task_id, set()).add(event)

        async def requested(conn: Conn) -> bool:
            cur = await conn.execute(_SQL["cancel_state"], {"id": task_id})
            row = await cur.fetchone()
            if row is None:
                raise TaskNotFoundError(task_id)
            return bool(row[0])

        try:
            while True:
                event.clear()
                if await self._run(requested, "wait_for_cancel"):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(self._wait_s(), remaining))
        finally:
            waiters = self._cancel_waiters.get(task_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._cancel_waiters[task_id]

    async def aclose(self) -> None:
        """Stop following notifications; the pool and its listener belong to the
        composition root. Idempotent."""
        await self._completions.aclose()
        self._closed = True
        self._unsubscribe()


def _filters(
    *, status: TaskStatus | None = None, kind: str | None = None, concurrency_key: str | None = None
) -> tuple[list[sql.Composable], dict[str, Any]]:
    """The conditions of the given filters and their parameters."""
    clauses: list[sql.Composable] = []
    params: dict[str, Any] = {}
    for column, value in (("status", status), ("kind", kind), ("concurrency_key", concurrency_key)):
        if value is not None:
            clauses.append(
                sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column))
            )
            params[column] = value.value if isinstance(value, TaskStatus) else value
    return clauses, params


def _where(clauses: list[sql.Composable]) -> sql.Composable:
    """A ``where`` clause joining ``clauses`` with ``and`` (nothing for none)."""
    if not clauses:
        return sql.SQL("")
    return sql.SQL(" where ") + sql.SQL(" and ").join(clauses)
