"""The SQLite work queue: one machine, no set-up, several worker processes on one file.

Every write runs in ``BEGIN IMMEDIATE`` (see :class:`SqliteDatabase`), which takes the
database's single write lock up front: two processes never both select the same queued
task, and the busy timeout makes them wait their turn instead of failing. WAL mode lets
readers (``get``, ``list``, the polls below) run while a writer works.

SQLite cannot notify other processes, so ``wait_for_work`` and ``wait_for_cancel`` poll
with a short interval; an ``enqueue`` or ``cancel`` made through this very object wakes
its own waiters at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

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
from forgeline.adapters.sql.database import SqliteDatabase, storage_error
from forgeline.adapters.sql.executor import encode_time
from forgeline.domain.backoff import Backoff
from forgeline.domain.clock import utcnow
from forgeline.domain.errors import (
    LeaseLostError,
    TaskNotFoundError,
    TaskStateError,
)
from forgeline.domain.task import Lease, TaskStatus, WorkTask
from forgeline.ports.queue import Enqueued, NewTask

T = TypeVar("T")

_SQL = queries.load("forgeline.adapters.queue.sql", "sqlite")


class SqliteWorkQueue:
    """:class:`~forgeline.ports.queue.WorkQueue` on a shared :class:`SqliteDatabase`."""

    def __init__(
        self,
        db: SqliteDatabase,
        *,
        backoff: Backoff | None = None,
        poll_interval_s: float = 0.05,
        cancel_poll_interval_s: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._backoff = backoff or Backoff()
        self._poll_s = poll_interval_s
        self._cancel_poll_s = cancel_poll_interval_s
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not cryptography
        # Wakes this process's own waiters at once; other processes find out by polling.
        self._work_event = asyncio.Event()
        self._cancel_events: dict[str, asyncio.Event] = {}

    # -- plumbing -------------------------------------------------------------------------

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.write(fn)
        except sqlite3.Error as exc:
            raise storage_error("queue write", exc) from exc

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.read(fn)
        except sqlite3.Error as exc:
            raise storage_error("queue read", exc) from exc

    @staticmethod
    def _now() -> datetime:
        return utcnow()

    @staticmethod
    def _fetch(conn: sqlite3.Connection, task_id: str) -> WorkTask:
        row = conn.execute(_SQL["get_task"], {"id": task_id}).fetchone()
        if row is None:
            raise TaskNotFoundError(task_id)
        return task_from_row(row)

    def _fenced(
        self,
        lease: Lease,
        query: str,
        params: Mapping[str, Any],
        *,
        done: TaskStatus | None = None,
    ) -> Callable[[sqlite3.Connection], WorkTask]:
        """A write that only applies while ``lease`` is current; else ``LeaseLostError``.

        ``done`` is the status this write leaves a task in: finding the task already so
        under the same token means a retry of this very write, which is not an error.
        """

        def run(conn: sqlite3.Connection) -> WorkTask:
            row = conn.execute(
                query, {**params, "id": lease.task_id, "token": lease.token}
            ).fetchone()
            if row is not None:
                return task_from_row(row)
            task = self._fetch(conn, lease.task_id)
            if done is not None and task.status is done and task.lease_token == lease.token:
                return task
            raise LeaseLostError(lease.task_id, lease.token)

        return run

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
        """Add a task (or return the one with the same idempotency key); with
        ``max_queued``, only while fewer tasks of ``concurrency_key`` are queued."""
        check_max_queued(max_queued, concurrency_key)
        new = NewTask(
            kind=kind,
            payload=payload,
            priority=priority,
            run_after=run_after,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            concurrency_key=concurrency_key,
            request_hash=request_hash,
        )
        (done,) = await self._enqueue([new], max_queued)
        return done

    async def enqueue_many(self, tasks: Sequence[NewTask]) -> list[Enqueued]:
        """Add many tasks in one transaction; results in the order of ``tasks``."""
        return await self._enqueue(tasks, None)

    async def _enqueue(self, tasks: Sequence[NewTask], max_queued: int | None) -> list[Enqueued]:
        if not tasks:
            return []
        rows = [self._insert_params(check_new_task(task)) for task in tasks]

        def run(conn: sqlite3.Connection) -> list[Enqueued]:
            now = encode_time(self._now())
            out: list[Enqueued] = []
            for params in rows:
                params["now"] = now
                params["run_after"] = params["run_after"] or now
                if max_queued is not None:
                    # Inside BEGIN IMMEDIATE: no other writer can queue between the count
                    # and the insert. A replay of a known key skips the cap (it adds nothing).
                    replay = conn.execute(
                        _SQL["get_task_by_idempotency_key"],
                        {"idempotency_key": params["idempotency_key"]},
                    ).fetchone()
                    if replay is None:
                        key = params["concurrency_key"]
                        (queued,) = conn.execute(
                            _SQL["count_queued"], {"concurrency_key": key}
                        ).fetchone()
                        check_room(queued, max_queued, key)
                row = conn.execute(_SQL["insert_task"] + " returning *", params).fetchone()
                if row is not None:
                    out.append(Enqueued(task_from_row(row), created=True))
                    continue
                existing = conn.execute(
                    _SQL["get_task_by_idempotency_key"],
                    {"idempotency_key": params["idempotency_key"]},
                ).fetchone()
                if existing is None:  # an id clash: a uuid4 is never reused, so it is ours
                    existing = conn.execute(_SQL["get_task"], {"id": params["id"]}).fetchone()
                out.append(
                    Enqueued(task_from_row(existing), created=existing["id"] == params["id"])
                )
            return out

        result = await self._write(run)
        self._work_event.set()
        return result

    @staticmethod
    def _insert_params(task: NewTask) -> dict[str, Any]:
        return {
            "id": new_task_id(),
            "kind": task.kind,
            "payload": dump_json(task.payload, "payload"),
            "priority": task.priority,
            "max_attempts": task.max_attempts,
            "run_after": None if task.run_after is None else encode_time(task.run_after),
            "concurrency_key": task.concurrency_key,
            "idempotency_key": task.idempotency_key,
            "request_hash": task.request_hash,
        }

    async def claim(
        self,
        worker: str,
        *,
        lease_s: float,
        limit: int = 1,
        kinds: Sequence[str] | None = None,
    ) -> list[Lease]:
        """Lease up to ``limit`` eligible tasks to ``worker`` in one transaction."""
        check_lease_s(lease_s)
        check_limit(limit, MAX_CLAIM)
        kinds_json = None if kinds is None else json.dumps(kinds_list(kinds))

        def run(conn: sqlite3.Connection) -> list[WorkTask]:
            now = self._now()
            rows = conn.execute(
                _SQL["claim"],
                {
                    "worker": worker,
                    "now": encode_time(now),
                    "expires_at": encode_time(now + timedelta(seconds=lease_s)),
                    "kinds": kinds_json,
                    "limit": limit,
                },
            ).fetchall()
            return [task_from_row(row) for row in rows]

        tasks = await self._write(run)
        tasks.sort(key=lambda t: (-t.priority, t.created_at))
        return [
            Lease(task=t, worker=worker, token=t.lease_token, expires_at=t.lease_expires_at)  # type: ignore[arg-type]  # set by claim
            for t in tasks
        ]

    async def heartbeat(self, lease: Lease, *, lease_s: float) -> WorkTask:
        """Extend the lease; the returned task says whether cancel was requested."""
        check_lease_s(lease_s)
        now = self._now()
        params = {
            "now": encode_time(now),
            "expires_at": encode_time(now + timedelta(seconds=lease_s)),
        }
        return await self._write(self._fenced(lease, _SQL["heartbeat"], params))

    async def complete(self, lease: Lease, result: Mapping[str, Any] | None = None) -> WorkTask:
        """Mark the task completed with an optional result."""
        params = {"now": encode_time(self._now()), "result": dump_json(result, "result")}
        task = await self._write(
            self._fenced(lease, _SQL["complete"], params, done=TaskStatus.COMPLETED)
        )
        self._key_freed(task)
        return task

    async def finish_cancelled(
        self, lease: Lease, result: Mapping[str, Any] | None = None
    ) -> WorkTask:
        """The worker stopped the task: mark it ``cancelled``."""
        params = {"now": encode_time(self._now()), "result": dump_json(result, "result")}
        task = await self._write(
            self._fenced(lease, _SQL["finish_cancelled"], params, done=TaskStatus.CANCELLED)
        )
        self._key_freed(task)
        return task

    async def fail(
        self,
        lease: Lease,
        error: str,
        *,
        retryable: bool,
        result: Mapping[str, Any] | None = None,
    ) -> WorkTask:
        """Record a failed attempt: re-queue with back-off, or fail for good."""
        now = self._now()
        delay = self._backoff.delay(lease.task.attempts, self._rng)
        params = {
            "now": encode_time(now),
            "run_after": encode_time(now + timedelta(seconds=delay)),
            "retryable": retryable,
            "error": error,
            "result": dump_json(result, "result"),
        }
        task = await self._write(self._fenced(lease, _SQL["fail"], params))
        self._key_freed(task)
        return task

    async def release(self, lease: Lease) -> WorkTask:
        """Give a running task back to the queue without counting an attempt."""
        task = await self._write(
            self._fenced(lease, _SQL["release"], {"now": encode_time(self._now())})
        )
        self._work_event.set()
        return task

    async def cancel(self, task_id: str) -> WorkTask:
        """Cancel a queued task now, or ask the worker of a running one to stop."""

        def run(conn: sqlite3.Connection) -> WorkTask:
            params = {"id": task_id, "now": encode_time(self._now())}
            for name in ("cancel_queued", "cancel_running"):
                row = conn.execute(_SQL[name], params).fetchone()
                if row is not None:
                    return task_from_row(row)
            task = self._fetch(conn, task_id)
            raise TaskStateError(task_id, task.status.value, "cancel")

        task = await self._write(run)
        event = self._cancel_events.get(task_id)
        if event is not None:
            event.set()
        return task

    async def get(self, task_id: str) -> WorkTask:
        """The task, or ``TaskNotFoundError``."""
        return await self._read(lambda conn: self._fetch(conn, task_id))

    async def find_by_idempotency_key(self, idempotency_key: str) -> WorkTask | None:
        """The task enqueued with that idempotency key, or None."""
        row = await self._read(
            lambda conn: conn.execute(
                _SQL["get_task_by_idempotency_key"], {"idempotency_key": idempotency_key}
            ).fetchone()
        )
        return None if row is None else task_from_row(row)

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
        where, params = _filters(status=status, kind=kind, concurrency_key=concurrency_key)
        clauses = [where] if where else []
        if concurrency_keys is not None:
            clauses.append("concurrency_key in (select value from json_each(:keys))")
            params["keys"] = json.dumps(list(concurrency_keys))
        if since is not None:
            clauses.append("created_at >= :since")
            params["since"] = encode_time(since)
        if before is not None:
            clauses.append("seq < :before")
            params["before"] = before
        sql = "select * from tasks"
        if clauses:
            sql += " where " + " and ".join(clauses)
        sql += " order by seq desc limit :limit"

        def run(conn: sqlite3.Connection) -> list[WorkTask]:
            return [task_from_row(row) for row in conn.execute(sql, {**params, "limit": limit})]

        return await self._read(run)

    async def count(self, *, status: TaskStatus, concurrency_key: str | None = None) -> int:
        """How many tasks are in ``status``."""
        where, params = _filters(status=status, concurrency_key=concurrency_key)
        sql = f"select count(*) from tasks where {where}"  # noqa: S608  # fixed fragments
        return await self._read(lambda conn: int(conn.execute(sql, params).fetchone()[0]))

    async def recover_expired(self) -> int:
        """Re-queue tasks whose lease expired; how many changed."""
        rows = await self._write(
            lambda conn: conn.execute(
                _SQL["recover_expired"], {"now": encode_time(self._now())}
            ).fetchall()
        )
        if rows:
            self._work_event.set()
        return len(rows)

    async def wait_for_work(self, timeout_s: float) -> None:
        """Return when a due task is queued (polled), or after ``timeout_s``."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            self._work_event.clear()
            if await self._read(self._has_work):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._work_event.wait(), min(self._poll_s, remaining))
            except TimeoutError:
                continue
            return

    def _has_work(self, conn: sqlite3.Connection) -> bool:
        row = conn.execute(_SQL["has_work"], {"now": encode_time(self._now())}).fetchone()
        return bool(row[0])

    async def wait_for_cancel(self, task_id: str, timeout_s: float) -> bool:
        """True once cancel of ``task_id`` is requested (polled), False after ``timeout_s``."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        event = self._cancel_events.setdefault(task_id, asyncio.Event())
        try:
            while True:
                row = await self._read(
                    lambda conn: conn.execute(_SQL["cancel_state"], {"id": task_id}).fetchone()
                )
                if row is None:
                    raise TaskNotFoundError(task_id)
                if row["cancel_requested"]:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(self._cancel_poll_s, remaining))
                event.clear()
        finally:
            if self._cancel_events.get(task_id) is event:
                del self._cancel_events[task_id]

    async def aclose(self) -> None:
        """Nothing of its own to close: the database handle belongs to the composition root."""

    def _key_freed(self, task: WorkTask) -> None:
        # A finished task of a concurrency key makes the next task of that key eligible;
        # a retried one is queued again.
        if task.concurrency_key is not None or task.status is TaskStatus.QUEUED:
            self._work_event.set()


def _filters(
    *, status: TaskStatus | None = None, kind: str | None = None, concurrency_key: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The conditions (fixed fragments joined by ``and``) and their parameters."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for column, value in (("status", status), ("kind", kind), ("concurrency_key", concurrency_key)):
        if value is not None:
            clauses.append(f"{column} = :{column}")
            params[column] = value.value if isinstance(value, TaskStatus) else value
    return " and ".join(clauses), params
