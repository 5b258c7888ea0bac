"""What both queue adapters share: input checks, JSON, rows, retry back-off, lease sizes."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from forgeline.adapters.sql.executor import parse_json, parse_optional_time, parse_time
from forgeline.domain.errors import CapacityError, ValidationError
from forgeline.domain.task import TaskStatus, WorkTask
from forgeline.ports.queue import NewTask

#: Longest accepted lease: a lease is renewed by heartbeats, so a long one only delays
#: recovery after a crash.
MAX_LEASE_S = 24 * 3600.0
#: Largest batch one ``claim`` may lease.
MAX_CLAIM = 1000
#: Largest page ``list`` returns.
MAX_LIST = 1000


def task_from_row(row: Mapping[str, Any]) -> WorkTask:
    """A ``tasks`` row as a WorkTask, from either dialect (JSON as text or decoded, times as
    text or ``timestamptz``)."""
    return WorkTask(
        id=row["id"],
        seq=row["seq"],
        kind=row["kind"],
        payload=parse_json(row["payload"]),
        status=TaskStatus(row["status"]),
        priority=row["priority"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        created_at=parse_time(row["created_at"]),
        updated_at=parse_time(row["updated_at"]),
        run_after=parse_time(row["run_after"]),
        concurrency_key=row["concurrency_key"],
        idempotency_key=row["idempotency_key"],
        worker=row["worker"],
        lease_token=row["lease_token"],
        lease_expires_at=parse_optional_time(row["lease_expires_at"]),
        cancel_requested=bool(row["cancel_requested"]),
        started_at=parse_optional_time(row["started_at"]),
        finished_at=parse_optional_time(row["finished_at"]),
        last_error=row["last_error"],
        result=parse_json(row["result"]),
        request_hash=row["request_hash"],
    )


def new_task_id() -> str:
    """A fresh task id; chosen by the client so that a retried insert is idempotent."""
    return str(uuid.uuid4())


def check_new_task(task: NewTask) -> NewTask:
    """Raise ``ValidationError`` for a task that can never be stored or run."""
    if not task.kind or not task.kind.strip():
        raise ValidationError("a task needs a kind")
    if task.max_attempts < 1:
        raise ValidationError(f"max_attempts must be at least 1, got {task.max_attempts}")
    if task.run_after is not None and task.run_after.tzinfo is None:
        raise ValidationError("run_after must be timezone-aware")
    for name, key in (
        ("idempotency_key", task.idempotency_key),
        ("concurrency_key", task.concurrency_key),
    ):
        if key is not None and not key:
            raise ValidationError(f"{name} must not be empty")
    return task


def check_max_queued(max_queued: int | None, concurrency_key: str | None) -> None:
    """Raise ``ValidationError`` for a cap that cannot apply: one counts a concurrency key."""
    if max_queued is None:
        return
    if concurrency_key is None:
        raise ValidationError("max_queued needs a concurrency_key to count")
    if max_queued < 1:
        raise ValidationError(f"max_queued must be at least 1, got {max_queued}")


def check_room(queued: int, max_queued: int, concurrency_key: str) -> None:
    """Raise ``CapacityError`` when ``queued`` tasks of the key leave no room for one more."""
    if queued >= max_queued:
        raise CapacityError(
            f"{concurrency_key!r} already has {queued} queued tasks (the cap is {max_queued});"
            " retry once some have started"
        )


def check_lease_s(lease_s: float) -> float:
    """Raise ``ValidationError`` unless ``lease_s`` is a usable lease length."""
    if not math.isfinite(lease_s) or not 0 < lease_s <= MAX_LEASE_S:
        raise ValidationError(f"lease_s must be in (0, {MAX_LEASE_S:g}], got {lease_s!r}")
    return lease_s


def check_limit(limit: int, maximum: int) -> int:
    """Raise ``ValidationError`` unless ``1 <= limit <= maximum``."""
    if not 1 <= limit <= maximum:
        raise ValidationError(f"limit must be in [1, {maximum}], got {limit}")
    return limit


def check_since(since: datetime | None) -> None:
    """Raise ``ValidationError`` for a naive ``since`` (whose time zone is anyone's guess)."""
    if since is not None and since.tzinfo is None:
        raise ValidationError("since must be timezone-aware")


def dump_json(value: Mapping[str, Any] | None, what: str) -> str | None:
    """``value`` as JSON text; ``ValidationError`` if it is not JSON-serializable."""
    if value is None:
        return None
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} is not a JSON object: {exc}") from exc


def kinds_list(kinds: Sequence[str] | None) -> list[str] | None:
    """``kinds`` as a list, refusing an empty filter (it would match nothing, surely a bug)."""
    if kinds is None:
        return None
    if isinstance(kinds, str) or not kinds:
        raise ValidationError("kinds must be a non-empty sequence of kind names")
    return list(kinds)
