"""The callback outbox on PostgreSQL (many workers, many machines).

Claims select due rows ``FOR UPDATE SKIP LOCKED`` and lease them in the same statement:
concurrent claimers skip each other's rows instead of waiting on them, and a row whose
lease runs is not due for anyone else. Times come from the adapter's clock (UTC), like the
SQLite adapter, so one contract suite with one fake clock covers both.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from forgeline.adapters.callbacks._common import (
    Clock,
    attempt_from_row,
    check_transition,
    clip_error,
    delivery_from_row,
    new_delivery_id,
    utc_now,
)
from forgeline.adapters.sql.database import PostgresDatabase
from forgeline.domain.callbacks import (
    CallbackDelivery,
    DeliveryAttempt,
    DeliveryStatus,
    canonical_body,
)
from forgeline.domain.errors import LeaseLostError, NotFoundError, StorageError

_CLAIM = """
with due as (
    select id from callback_deliveries
    where status = 'pending' and next_attempt_at <= %(now)s
      and (lease_expires_at is null or lease_expires_at <= %(now)s)
    order by next_attempt_at, id
    limit %(limit)s
    for update skip locked
)
update callback_deliveries d
set lease_owner = %(owner)s, lease_token = d.lease_token + 1, lease_expires_at = %(expires)s
from due where d.id = due.id
returning d.*
"""

_RECORD = """
update callback_deliveries
set status = %(status)s, attempts = attempts + 1,
    next_attempt_at = coalesce(%(retry_at)s, next_attempt_at),
    last_status_code = %(status_code)s, last_error = %(error)s, finished_at = %(finished)s,
    lease_owner = null, lease_expires_at = null
where id = %(id)s and lease_token = %(token)s and status = 'pending'
returning *
"""

_INSERT_ATTEMPT = """
insert into callback_attempts
    (delivery_id, number, started_at, duration_ms, outcome, status_code, error)
values (%s, %s, %s, %s, %s, %s, %s)
"""


def _same(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise StorageError(f"callback outbox: expected a timestamp, got {type(value).__name__}")
    return value


def _storage_error(exc: psycopg.Error) -> StorageError:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return StorageError(f"callback outbox: {first}")


class PostgresCallbackOutbox:
    """:class:`~forgeline.ports.callbacks.CallbackOutbox` over a :class:`PostgresDatabase`."""

    def __init__(self, database: PostgresDatabase, *, clock: Clock = utc_now) -> None:
        self._db = database
        self._clock = clock

    async def enqueue(
        self,
        task_id: str,
        url: str,
        event: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> CallbackDelivery:
        """Store a new pending delivery (or return the one with the same idempotency key)."""
        body = canonical_body(payload)
        now = self._clock()
        try:
            async with self._db.connection() as conn, conn.transaction():
                cur = conn.cursor(row_factory=dict_row)
                # ON CONFLICT DO NOTHING makes concurrent enqueues with one key race-free:
                # the loser inserts nothing and reads the winner's row below.
                await cur.execute(
                    "insert into callback_deliveries (id, task_id, event, url, body,"
                    " idempotency_key, created_at, next_attempt_at)"
                    " values (%s, %s, %s, %s, %s, %s, %s, %s)"
                    " on conflict (idempotency_key) do nothing returning *",
                    (new_delivery_id(), task_id, event, url, body, idempotency_key, now, now),
                )
                row = await cur.fetchone()
                if row is not None:
                    return delivery_from_row(row, _same)
                await cur.execute(
                    "select * from callback_deliveries where idempotency_key = %s",
                    (idempotency_key,),
                )
                existing = await cur.fetchone()
                if existing is None:  # deleted between the two statements: cannot happen today
                    raise StorageError("callback outbox: idempotent delivery vanished")
                return delivery_from_row(existing, _same, await _history(cur, existing["id"]))
        except psycopg.Error as exc:
            raise _storage_error(exc) from exc

    async def claim_due(self, owner: str, *, limit: int, lease_s: float) -> list[CallbackDelivery]:
        """Lease up to ``limit`` due deliveries to ``owner``; empty when none is due."""
        if limit <= 0:
            return []
        now = self._clock()
        params = {
            "now": now,
            "limit": limit,
            "owner": owner,
            "expires": now + timedelta(seconds=lease_s),
        }
        try:
            async with self._db.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(_CLAIM, params)
                rows = await cur.fetchall()
        except psycopg.Error as exc:
            raise _storage_error(exc) from exc
        claimed = [delivery_from_row(row, _same) for row in rows]
        claimed.sort(key=lambda d: (d.next_attempt_at, d.id))
        return claimed

    async def record_attempt(
        self,
        claimed: CallbackDelivery,
        attempt: DeliveryAttempt,
        *,
        retry_at: datetime | None = None,
    ) -> CallbackDelivery:
        """Store ``attempt`` (numbered ``claimed.attempts + 1``) and the delivery's new state."""
        check_transition(attempt, retry_at)
        status = attempt.outcome.final_status
        error = clip_error(attempt.error)
        params = {
            "status": status.value,
            "retry_at": retry_at,
            "status_code": attempt.status_code,
            "error": error,
            "finished": self._clock() if status.is_final else None,
            "id": claimed.id,
            "token": claimed.lease_token,
        }
        try:
            async with self._db.connection() as conn, conn.transaction():
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(_RECORD, params)
                row = await cur.fetchone()
                if row is None:
                    raise LeaseLostError(claimed.id, claimed.lease_token)
                await cur.execute(
                    _INSERT_ATTEMPT,
                    (
                        claimed.id,
                        row["attempts"],
                        attempt.started_at,
                        attempt.duration_ms,
                        attempt.outcome.value,
                        attempt.status_code,
                        error,
                    ),
                )
                return delivery_from_row(row, _same, await _history(cur, claimed.id))
        except psycopg.Error as exc:
            raise _storage_error(exc) from exc

    async def release(self, claimed: CallbackDelivery) -> None:
        """Drop the lease of ``claimed`` without recording an attempt."""
        try:
            async with self._db.connection() as conn:
                await conn.execute(
                    "update callback_deliveries set lease_owner = null, lease_expires_at = null"
                    " where id = %s and lease_token = %s",
                    (claimed.id, claimed.lease_token),
                )
        except psycopg.Error as exc:
            raise _storage_error(exc) from exc

    async def get(self, delivery_id: str) -> CallbackDelivery:
        """The delivery with its attempt history, or ``NotFoundError``."""
        try:
            async with self._db.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute("select * from callback_deliveries where id = %s", (delivery_id,))
                row = await cur.fetchone()
                if row is None:
                    raise NotFoundError(f"no callback delivery with id {delivery_id!r}")
                return delivery_from_row(row, _same, await _history(cur, delivery_id))
        except psycopg.Error as exc:
            raise _storage_error(exc) from exc

    async def list_for_task(self, task_id: str) -> list[CallbackDelivery]:
        """Every delivery of the task, oldest first, each with its attempt history."""
        try:
            async with self._db.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(
                    "select * from callback_deliveries where task_id = %s order by created_at, id",
                    (task_id,),
                )
                rows = await cur.fetchall()
                await cur.execute(
                    "select a.* from callback_attempts a join callback_deliveries d"
                    " on d.id = a.delivery_id where d.task_id = %s order by a.number",
                    (task_id,),
                )
                attempts = await cur.fetchall()
        except psycopg.Error as exc:
            raise _storage_error(exc) from exc
        by_delivery: dict[str, list[DeliveryAttempt]] = {}
        for attempt in attempts:
            by_delivery.setdefault(attempt["delivery_id"], []).append(
                attempt_from_row(attempt, _same)
            )
        return [
            delivery_from_row(row, _same, tuple(by_delivery.get(row["id"], ()))) for row in rows
        ]

    async def next_attempt_at(self) -> datetime | None:
        """When a pending delivery next becomes claimable; ``None`` if none is pending."""
        try:
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    "select min(greatest(next_attempt_at, lease_expires_at))"
                    " from callback_deliveries where status = 'pending'"
                )
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise _storage_error(exc) from exc
        return None if row is None or row[0] is None else _same(row[0])

    async def count(self, status: DeliveryStatus) -> int:
        """How many deliveries are in ``status``."""
        try:
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    "select count(*) from callback_deliveries where status = %s", (status.value,)
                )
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise _storage_error(exc) from exc
        return 0 if row is None else int(str(row[0]))


async def _history(
    cur: psycopg.AsyncCursor[dict[str, Any]], delivery_id: str
) -> tuple[DeliveryAttempt, ...]:
    await cur.execute(
        "select * from callback_attempts where delivery_id = %s order by number", (delivery_id,)
    )
    return tuple(attempt_from_row(row, _same) for row in await cur.fetchall())
