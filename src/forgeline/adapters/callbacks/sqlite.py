"""The callback outbox on SQLite (embedded mode).

Claims run inside ``BEGIN IMMEDIATE`` (``SqliteDatabase.write``): SQLite admits one writer
at a time, so the select-then-lease of one claimer cannot interleave with another's, even
across processes sharing the file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from forgeline.adapters.callbacks._common import (
    Clock,
    attempt_from_row,
    check_transition,
    clip_error,
    delivery_from_row,
    new_delivery_id,
    utc_now,
)
from forgeline.adapters.sql.database import SqliteDatabase
from forgeline.domain.callbacks import (
    CallbackDelivery,
    DeliveryAttempt,
    DeliveryStatus,
    canonical_body,
)
from forgeline.domain.errors import LeaseLostError, NotFoundError, StorageError

T = TypeVar("T")


def _ts(moment: datetime) -> str:
    # Fixed width with microseconds, so comparing the text compares the times.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: Any) -> datetime:
    return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


class SqliteCallbackOutbox:
    """:class:`~forgeline.ports.callbacks.CallbackOutbox` over a :class:`SqliteDatabase`."""

    def __init__(self, database: SqliteDatabase, *, clock: Clock = utc_now) -> None:
        self._db = database
        self._clock = clock

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.write(fn)
        except sqlite3.Error as exc:
            raise StorageError(f"callback outbox: {exc}") from exc

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.read(fn)
        except sqlite3.Error as exc:
            raise StorageError(f"callback outbox: {exc}") from exc

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
        now = _ts(self._clock())
        delivery_id = new_delivery_id()

        def run(conn: sqlite3.Connection) -> CallbackDelivery:
            if idempotency_key is not None:
                row = conn.execute(
                    "select * from callback_deliveries where idempotency_key = ?",
                    (idempotency_key,),
                ).fetchone()
                if row is not None:
                    return delivery_from_row(row, _parse, _history(conn, row["id"]))
            conn.execute(
                "insert into callback_deliveries (id, task_id, event, url, body,"
                " idempotency_key, created_at, next_attempt_at) values (?, ?, ?, ?, ?, ?, ?, ?)",
                (delivery_id, task_id, event, url, body, idempotency_key, now, now),
            )
            row = conn.execute(
                "select * from callback_deliveries where id = ?", (delivery_id,)
            ).fetchone()
            return delivery_from_row(row, _parse)

        return await self._write(run)

    async def claim_due(self, owner: str, *, limit: int, lease_s: float) -> list[CallbackDelivery]:
        """Lease up to ``limit`` due deliveries to ``owner``; empty when none is due."""
        if limit <= 0:
            return []
        moment = self._clock()
        now, expires = _ts(moment), _ts(moment + timedelta(seconds=lease_s))

        def run(conn: sqlite3.Connection) -> list[CallbackDelivery]:
            ids = [
                row[0]
                for row in conn.execute(
                    "select id from callback_deliveries where status = 'pending'"
                    " and next_attempt_at <= ?"
                    " and (lease_expires_at is null or lease_expires_at <= ?)"
                    " order by next_attempt_at, id limit ?",
                    (now, now, limit),
                )
            ]
            claimed: list[CallbackDelivery] = []
            for delivery_id in ids:
                row = conn.execute(
                    "update callback_deliveries set lease_owner = ?,"
                    " lease_token = lease_token + 1, lease_expires_at = ?"
                    " where id = ? returning *",
                    (owner, expires, delivery_id),
                ).fetchone()
                claimed.append(delivery_from_row(row, _parse))
            return claimed

        return await self._write(run)

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
        finished = _ts(self._clock()) if status.is_final else None

        def run(conn: sqlite3.Connection) -> CallbackDelivery | None:
            row = conn.execute(
                "update callback_deliveries set status = ?, attempts = attempts + 1,"
                " next_attempt_at = coalesce(?, next_attempt_at), last_status_code = ?,"
                " last_error = ?, finished_at = ?, lease_owner = null, lease_expires_at = null"
                " where id = ? and lease_token = ? and status = 'pending' returning *",
                (
                    status.value,
                    _ts(retry_at) if retry_at is not None else None,
                    attempt.status_code,
                    clip_error(attempt.error),
                    finished,
                    claimed.id,
                    claimed.lease_token,
                ),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "insert into callback_attempts (delivery_id, number, started_at, duration_ms,"
                " outcome, status_code, error) values (?, ?, ?, ?, ?, ?, ?)",
                (
                    claimed.id,
                    row["attempts"],
                    _ts(attempt.started_at),
                    attempt.duration_ms,
                    attempt.outcome.value,
                    attempt.status_code,
                    clip_error(attempt.error),
                ),
            )
            return delivery_from_row(row, _parse, _history(conn, claimed.id))

        result = await self._write(run)
        if result is None:
            raise LeaseLostError(claimed.id, claimed.lease_token)
        return result

    async def release(self, claimed: CallbackDelivery) -> None:
        """Drop the lease of ``claimed`` without recording an attempt."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "update callback_deliveries set lease_owner = null, lease_expires_at = null"
                " where id = ? and lease_token = ?",
                (claimed.id, claimed.lease_token),
            )

        await self._write(run)

    async def get(self, delivery_id: str) -> CallbackDelivery:
        """The delivery with its attempt history, or ``NotFoundError``."""

        def run(conn: sqlite3.Connection) -> CallbackDelivery | None:
            row = conn.execute(
                "select * from callback_deliveries where id = ?", (delivery_id,)
            ).fetchone()
            return (
                None if row is None else delivery_from_row(row, _parse, _history(conn, row["id"]))
            )

        result = await self._read(run)
        if result is None:
            raise NotFoundError(f"no callback delivery with id {delivery_id!r}")
        return result

    async def list_for_task(self, task_id: str) -> list[CallbackDelivery]:
        """Every delivery of the task, oldest first, each with its attempt history."""

        def run(conn: sqlite3.Connection) -> list[CallbackDelivery]:
            rows = conn.execute(
                "select * from callback_deliveries where task_id = ? order by created_at, id",
                (task_id,),
            ).fetchall()
            return [delivery_from_row(row, _parse, _history(conn, row["id"])) for row in rows]

        return await self._read(run)

    async def next_attempt_at(self) -> datetime | None:
        """When a pending delivery next becomes claimable; ``None`` if none is pending."""

        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "select min(max(next_attempt_at, coalesce(lease_expires_at, next_attempt_at)))"
                " from callback_deliveries where status = 'pending'"
            ).fetchone()
            return None if row is None else row[0]

        value = await self._read(run)
        return None if value is None else _parse(value)

    async def count(self, status: DeliveryStatus) -> int:
        """How many deliveries are in ``status``."""

        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "select count(*) from callback_deliveries where status = ?", (status.value,)
            ).fetchone()
            return int(row[0])

        return await self._read(run)


def _history(conn: sqlite3.Connection, delivery_id: str) -> tuple[DeliveryAttempt, ...]:
    rows = conn.execute(
        "select * from callback_attempts where delivery_id = ? order by number", (delivery_id,)
    ).fetchall()
    return tuple(attempt_from_row(row, _parse) for row in rows)
