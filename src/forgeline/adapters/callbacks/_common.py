"""What both outbox adapters share: ids, the clock, row → domain conversion, checks."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from forgeline.domain.callbacks import (
    AttemptOutcome,
    CallbackDelivery,
    DeliveryAttempt,
    DeliveryStatus,
)

Clock = Callable[[], datetime]

#: Longest stored attempt error: enough for a reason and an excerpt of the answer.
MAX_ERROR_CHARS = 500


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_delivery_id() -> str:
    """A fresh delivery id (the ``X-Forgeline-Delivery`` header)."""
    return str(uuid.uuid4())


def check_transition(attempt: DeliveryAttempt, retry_at: datetime | None) -> None:
    """Refuse an impossible ``record_attempt`` call before touching the database."""
    if attempt.outcome is AttemptOutcome.RETRY and retry_at is None:
        raise ValueError("a retry outcome needs retry_at")
    if attempt.outcome is not AttemptOutcome.RETRY and retry_at is not None:
        raise ValueError("only a retry outcome takes retry_at")


def clip_error(error: str | None) -> str | None:
    """``error`` cut to :data:`MAX_ERROR_CHARS`."""
    if error is None or len(error) <= MAX_ERROR_CHARS:
        return error
    return error[: MAX_ERROR_CHARS - 1] + "…"


def delivery_from_row(
    row: Mapping[str, Any],
    parse_time: Callable[[Any], datetime],
    history: tuple[DeliveryAttempt, ...] = (),
) -> CallbackDelivery:
    """A :class:`CallbackDelivery` from a row of ``callback_deliveries``."""

    def opt_time(value: Any) -> datetime | None:
        return None if value is None else parse_time(value)

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
        finished_at=opt_time(row["finished_at"]),
        lease_owner=row["lease_owner"],
        lease_token=int(row["lease_token"]),
        lease_expires_at=opt_time(row["lease_expires_at"]),
        history=history,
    )


def attempt_from_row(
    row: Mapping[str, Any], parse_time: Callable[[Any], datetime]
) -> DeliveryAttempt:
    """A :class:`DeliveryAttempt` from a row of ``callback_attempts``."""
    return DeliveryAttempt(
        number=int(row["number"]),
        started_at=parse_time(row["started_at"]),
        duration_ms=int(row["duration_ms"]),
        outcome=AttemptOutcome(row["outcome"]),
        status_code=row["status_code"],
        error=row["error"],
    )
