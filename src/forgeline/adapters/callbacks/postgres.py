"""The callback outbox on PostgreSQL (many workers, many machines).

Claims select due rows ``FOR UPDATE SKIP LOCKED`` and lease them in the same statement:
concurrent claimers skip each other's rows instead of waiting on them, and a row whose
lease runs is not due for anyone else. Times come from the adapter's clock (UTC), like the
SQLite adapter, so one contract suite with one fake clock covers both.

Every operation goes through :meth:`PostgresDatabase.run`, which repeats it when the
connection breaks; a repeated write finds what its first try committed (the delivery id is
chosen before the first try; an attempt is recorded once per lease and attempt number).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row

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

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

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
  and attempts = %(attempts)s
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


async def _rows(conn: Conn, query: str, params: Any = ()) -> list[DictRow]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def _history(conn: Conn, delivery_id: str) -> tuple[DeliveryAttempt, ...]:
    rows = await _rows(
        conn,
        "select * from callback_attempts where delivery_id = %s order by number",
        (delivery_id,),
    )
    return tuple(attempt_from_row(row, _same) for row in rows)


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
        delivery_id = new_delivery_id()

        async def insert(conn: Conn) -> CallbackDelivery:
            # ON CONFLICT DO NOTHING makes concurrent enqueues with one key race-free (the
            # loser reads the winner's row below), and a repeat finds its own row by id.
            inserted = await _rows(
                conn,
                "insert into callback_deliveries (id, task_id, event, url, body,"
                " idempotency_key, created_at, next_attempt_at)"
                " values (%s, %s, %s, %s, %s, %s, %s, %s)"
                " on conflict do nothing returning *",
                (delivery_id, task_id, event, url, body, idempotency_key, now, now),
            )
            if inserted:
                return delivery_from_row(inserted[0], _same)
            existing = await _rows(
                conn,
                "select * from callback_deliveries where id = %s or idempotency_key = %s",
                (delivery_id, idempotency_key),
            )
            if not existing:  # a clash needs a row, and nothing deletes deliveries
                raise StorageError("callback outbox: idempotent delivery vanished")
            return delivery_from_row(existing[0], _same, await _history(conn, existing[0]["id"]))

        return await self._db.run(insert, "callback outbox enqueue")

    async def claim_due(self, owner: str, *, limit: int, lease_s: float) -> list[CallbackDelivery]:
        """Lease up to ``limit`` due deliveries to ``owner``; empty when none is due.

        A repeat after a lost answer leases other rows; those of the first try wait for
        their lease to expire, as those of a sender that died do.
        """
        if limit <= 0:
            return []
        now = self._clock()
        params = {
            "now": now,
            "limit": limit,
            "owner": owner,
            "expires": now + timedelta(seconds=lease_s),
        }
        rows = await self._db.run(lambda conn: _rows(conn, _CLAIM, params), "callback outbox claim")
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
            "attempts": claimed.attempts,
        }

        tries = 0

        async def record(conn: Conn) -> CallbackDelivery:
            nonlocal tries
            tries += 1
            async with conn.transaction():
                updated = await _rows(conn, _RECORD, params)
                if updated:
                    row = updated[0]
                    await conn.execute(
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
                    return delivery_from_row(row, _same, await _history(conn, claimed.id))
                current = await _rows(
                    conn, "select * from callback_deliveries where id = %s", (claimed.id,)
                )
                # Only this lease records attempt claimed.attempts + 1: a repeat that finds
                # it recorded is ours, committed before the answer was lost.
                if (
                    tries > 1
                    and current
                    and current[0]["lease_token"] == claimed.lease_token
                    and current[0]["attempts"] == claimed.attempts + 1
                ):
                    return delivery_from_row(current[0], _same, await _history(conn, claimed.id))
                raise LeaseLostError(claimed.id, claimed.lease_token)

        return await self._db.run(record, "callback outbox record")

    async def release(self, claimed: CallbackDelivery) -> None:
        """Drop the lease of ``claimed`` without recording an attempt."""

        async def release(conn: Conn) -> None:
            await conn.execute(
                "update callback_deliveries set lease_owner = null, lease_expires_at = null"
                " where id = %s and lease_token = %s",
                (claimed.id, claimed.lease_token),
            )

        await self._db.run(release, "callback outbox release")

    async def get(self, delivery_id: str) -> CallbackDelivery:
        """The delivery with its attempt history, or ``NotFoundError``."""

        async def read(conn: Conn) -> CallbackDelivery:
            rows = await _rows(
                conn, "select * from callback_deliveries where id = %s", (delivery_id,)
            )
            if not rows:
                raise NotFoundError(f"no callback delivery with id {delivery_id!r}")
            return delivery_from_row(rows[0], _same, await _history(conn, delivery_id))

        return await self._db.run(read, "callback outbox read")

    async def list_for_task(self, task_id: str) -> list[CallbackDelivery]:
        """Every delivery of the task, oldest first, each with its attempt history."""

        async def read(conn: Conn) -> tuple[list[DictRow], list[DictRow]]:
            deliveries = await _rows(
                conn,
                "select * from callback_deliveries where task_id = %s order by created_at, id",
                (task_id,),
            )
            attempts = await _rows(
                conn,
                "select a.* from callback_attempts a join callback_deliveries d"
                " on d.id = a.delivery_id where d.task_id = %s order by a.number",
                (task_id,),
            )
            return deliveries, attempts

        rows, attempts = await self._db.run(read, "callback outbox read")
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
        rows = await self._db.run(
            lambda conn: _rows(
                conn,
                "select min(greatest(next_attempt_at, lease_expires_at)) as due"
                " from callback_deliveries where status = 'pending'",
            ),
            "callback outbox read",
        )
        return None if not rows or rows[0]["due"] is None else _same(rows[0]["due"])

    async def count(self, status: DeliveryStatus) -> int:
        """How many deliveries are in ``status``."""
        rows = await self._db.run(
            lambda conn: _rows(
                conn,
                "select count(*) as n from callback_deliveries where status = %s",
                (status.value,),
            ),
            "callback outbox read",
        )
        return int(rows[0]["n"]) if rows else 0
