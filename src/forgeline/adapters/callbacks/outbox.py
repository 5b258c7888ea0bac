"""The callback outbox on SQLite or PostgreSQL, over :mod:`forgeline.adapters.sql.executor`.

Its queries are in ``sql/<dialect>_queries.sql``: a claim leases due rows in one
statement (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so
two claimers never lease the same row. Times come from the outbox's clock (UTC) on both
dialects, so one contract suite with one fake clock covers both.

On PostgreSQL the executor repeats an operation when the connection breaks; a repeated
write finds what its first try committed (the delivery id is chosen before the first try;
an attempt is recorded once per lease and attempt number).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from forgeline.adapters.sql.database import Database
from forgeline.adapters.sql.executor import (
    Row,
    Session,
    parse_optional_time,
    parse_time,
    sql_executor,
)
from forgeline.domain.callbacks import (
    AttemptOutcome,
    CallbackDelivery,
    DeliveryAttempt,
    DeliveryStatus,
    canonical_body,
)
from forgeline.domain.clock import WallClock, utcnow
from forgeline.domain.errors import LeaseLostError, NotFoundError, StorageError

#: Longest stored attempt error: enough for a reason and an excerpt of the answer.
MAX_ERROR_CHARS = 500


def _clip_error(error: str | None) -> str | None:
    if error is None or len(error) <= MAX_ERROR_CHARS:
        return error
    return error[: MAX_ERROR_CHARS - 1] + "…"


def _check_transition(attempt: DeliveryAttempt, retry_at: datetime | None) -> None:
    # Refuse an impossible record_attempt call before touching the database.
    if attempt.outcome is AttemptOutcome.RETRY and retry_at is None:
        raise ValueError("a retry outcome needs retry_at")
    if attempt.outcome is not AttemptOutcome.RETRY and retry_at is not None:
        raise ValueError("only a retry outcome takes retry_at")


def _delivery(row: Row, history: tuple[DeliveryAttempt, ...] = ()) -> CallbackDelivery:
    return CallbackDelivery(
        id=row["id"],
        task_id=row["task_id"],
        event=row["event"],
        url=row["url"],
        body=bytes(row["body"]),
        status=DeliveryStatus(row["status"]),
        created_at=parse_time(row["created_at"]),
        next_attempt_at=parse_time(row["next_attempt_at"]),
        attempts=int(row["attempts"]),
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        finished_at=parse_optional_time(row["finished_at"]),
        lease_owner=row["lease_owner"],
        lease_token=int(row["lease_token"]),
        lease_expires_at=parse_optional_time(row["lease_expires_at"]),
        history=history,
    )


def _attempt(row: Row) -> DeliveryAttempt:
    return DeliveryAttempt(
        number=int(row["number"]),
        started_at=parse_time(row["started_at"]),
        duration_ms=int(row["duration_ms"]),
        outcome=AttemptOutcome(row["outcome"]),
        status_code=row["status_code"],
        error=row["error"],
    )


async def _history(s: Session, delivery_id: str) -> tuple[DeliveryAttempt, ...]:
    rows = await s.all("attempts_of_delivery", {"id": delivery_id})
    return tuple(_attempt(row) for row in rows)


class SqlCallbackOutbox:
    """:class:`~forgeline.ports.callbacks.CallbackOutbox` on a SQLite or PostgreSQL database."""

    def __init__(self, database: Database, *, clock: WallClock = utcnow) -> None:
        self._sql = sql_executor(database, "forgeline.adapters.callbacks.sql", "callback outbox")
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
        params = {
            "id": str(uuid.uuid4()),
            "task_id": task_id,
            "event": event,
            "url": url,
            "body": canonical_body(payload),
            "idempotency_key": idempotency_key,
            "now": self._sql.codec.time(self._clock()),
        }

        async def insert(s: Session) -> CallbackDelivery:
            inserted = await s.one("insert_delivery", params)
            if inserted is not None:
                return _delivery(inserted)
            existing = await s.one("get_delivery_or_key", params)
            if existing is None:  # a clash needs a row, and nothing deletes deliveries
                raise StorageError("callback outbox: idempotent delivery vanished")
            return _delivery(existing, await _history(s, existing["id"]))

        return await self._sql.write(insert)

    async def claim_due(self, owner: str, *, limit: int, lease_s: float) -> list[CallbackDelivery]:
        """Lease up to ``limit`` due deliveries to ``owner``; empty when none is due.

        On PostgreSQL a repeat after a lost answer leases other rows; those of the first
        try wait for their lease to expire, as those of a sender that died do.
        """
        if limit <= 0:
            return []
        now = self._clock()
        params = {
            "now": self._sql.codec.time(now),
            "limit": limit,
            "owner": owner,
            "expires": self._sql.codec.time(now + timedelta(seconds=lease_s)),
        }
        rows = await self._sql.write(lambda s: s.all("claim", params))
        claimed = [_delivery(row) for row in rows]
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
        _check_transition(attempt, retry_at)
        status = attempt.outcome.final_status
        time = self._sql.codec.time
        params = {
            "status": status.value,
            "retry_at": None if retry_at is None else time(retry_at),
            "status_code": attempt.status_code,
            "error": _clip_error(attempt.error),
            "finished": time(self._clock()) if status.is_final else None,
            "id": claimed.id,
            "token": claimed.lease_token,
            "attempts": claimed.attempts,
            "number": claimed.attempts + 1,
            "started_at": time(attempt.started_at),
            "duration_ms": attempt.duration_ms,
            "outcome": attempt.outcome.value,
        }
        tries = 0

        async def record(s: Session) -> CallbackDelivery:
            nonlocal tries
            tries += 1
            row = await s.one("record", params)
            if row is not None:
                await s.execute("insert_attempt", params)
                return _delivery(row, await _history(s, claimed.id))
            current = await s.one("get_delivery", params)
            # Only this lease records attempt claimed.attempts + 1: a repeat that finds it
            # recorded is ours, committed before the answer was lost.
            if (
                tries > 1
                and current is not None
                and current["lease_token"] == claimed.lease_token
                and current["attempts"] == claimed.attempts + 1
            ):
                return _delivery(current, await _history(s, claimed.id))
            raise LeaseLostError(claimed.id, claimed.lease_token)

        return await self._sql.write(record)

    async def release(self, claimed: CallbackDelivery) -> None:
        """Drop the lease of ``claimed`` without recording an attempt."""
        params = {"id": claimed.id, "token": claimed.lease_token}
        await self._sql.write(lambda s: s.execute("release", params))

    async def get(self, delivery_id: str) -> CallbackDelivery:
        """The delivery with its attempt history, or ``NotFoundError``."""

        async def read(s: Session) -> CallbackDelivery:
            row = await s.one("get_delivery", {"id": delivery_id})
            if row is None:
                raise NotFoundError(f"no callback delivery with id {delivery_id!r}")
            return _delivery(row, await _history(s, delivery_id))

        return await self._sql.read(read)

    async def list_for_task(self, task_id: str) -> list[CallbackDelivery]:
        """Every delivery of the task, oldest first, each with its attempt history."""

        async def read(s: Session) -> tuple[list[Row], list[Row]]:
            params = {"task_id": task_id}
            return await s.all("deliveries_of_task", params), await s.all(
                "attempts_of_task", params
            )

        rows, attempts = await self._sql.read(read)
        by_delivery: dict[str, list[DeliveryAttempt]] = {}
        for attempt in attempts:
            by_delivery.setdefault(attempt["delivery_id"], []).append(_attempt(attempt))
        return [_delivery(row, tuple(by_delivery.get(row["id"], ()))) for row in rows]

    async def next_attempt_at(self) -> datetime | None:
        """When a pending delivery next becomes claimable; ``None`` if none is pending."""
        row = await self._sql.read(lambda s: s.one("next_due"))
        return None if row is None else parse_optional_time(row["due"])

    async def count(self, status: DeliveryStatus) -> int:
        """How many deliveries are in ``status``."""
        row = await self._sql.read(lambda s: s.one("count", {"status": status.value}))
        return 0 if row is None else int(row["n"])
