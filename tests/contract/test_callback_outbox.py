"""The CallbackOutbox contract, run against SQLite and a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from forgeline.adapters.callbacks.outbox import SqlCallbackOutbox
from forgeline.adapters.sql.database import Database
from forgeline.domain.callbacks import (
    AttemptOutcome,
    CallbackDelivery,
    DeliveryAttempt,
    DeliveryStatus,
    canonical_body,
)
from forgeline.domain.errors import LeaseLostError, NotFoundError
from forgeline.ports.callbacks import CallbackOutbox

T0 = datetime(2026, 11, 24, 7, 0, 0, tzinfo=UTC)
PAYLOAD = {"task_id": "t-1", "project_id": "myapp", "status": "completed", "result": {"n": 1}}


class FakeClock:
    """A settable clock shared by the outbox under test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Env:
    """An outbox, its clock, and a factory for more outboxes on the same database."""

    outbox: CallbackOutbox
    clock: FakeClock
    another: Callable[[], CallbackOutbox]


def _make(db: Database, clock: FakeClock) -> CallbackOutbox:
    return SqlCallbackOutbox(db, clock=clock)


@pytest.fixture
def env(migrated_db: Database) -> Env:
    """A migrated database of each dialect with an outbox on a fake clock."""
    clock = FakeClock()
    return Env(_make(migrated_db, clock), clock, lambda: _make(migrated_db, clock))


def _attempt(outcome: AttemptOutcome, number: int = 1, **kw: object) -> DeliveryAttempt:
    return DeliveryAttempt(
        number=number,
        started_at=T0,
        duration_ms=12,
        outcome=outcome,
        status_code=kw.get("status_code"),  # type: ignore[arg-type]
        error=kw.get("error"),  # type: ignore[arg-type]
    )


async def _claim_one(outbox: CallbackOutbox, owner: str = "w1") -> CallbackDelivery:
    claimed = await outbox.claim_due(owner, limit=10, lease_s=30)
    assert len(claimed) == 1
    return claimed[0]


async def test_enqueue_stores_canonical_body_and_is_due_now(env: Env) -> None:
    """A new delivery is pending, due at once, and keeps the canonical JSON bytes."""
    delivery = await env.outbox.enqueue(
        "t-1", "https://x.example/h?k=1", "build.completed", PAYLOAD
    )
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.body == canonical_body(PAYLOAD)
    assert delivery.payload == PAYLOAD
    assert delivery.created_at == T0
    assert delivery.next_attempt_at == T0
    assert delivery.attempts == 0
    assert delivery.display_url == "https://x.example/h"
    assert await env.outbox.next_attempt_at() == T0
    got = await env.outbox.get(delivery.id)
    assert got.body == delivery.body
    assert got.url == "https://x.example/h?k=1"


async def test_idempotency_key_returns_the_same_delivery(env: Env) -> None:
    """Enqueuing twice with one idempotency key stores one delivery."""
    first = await env.outbox.enqueue(
        "t-1", "http://a/", "build.completed", PAYLOAD, idempotency_key="k"
    )
    second = await env.outbox.enqueue(
        "t-1", "http://b/", "build.completed", {}, idempotency_key="k"
    )
    assert second.id == first.id
    assert second.url == "http://a/"
    assert len(await env.outbox.list_for_task("t-1")) == 1


async def test_concurrent_idempotent_enqueues_store_one(env: Env) -> None:
    """Racing enqueues with one key, from two outboxes, all get the same single delivery."""
    other = env.another()
    results = await asyncio.gather(
        *(
            (env.outbox if i % 2 else other).enqueue(
                "t-1", "http://a/", "build.completed", PAYLOAD, idempotency_key="race"
            )
            for i in range(8)
        )
    )
    assert len({d.id for d in results}) == 1
    assert len(await env.outbox.list_for_task("t-1")) == 1


async def test_claim_leases_and_hides_from_others(env: Env) -> None:
    """A claimed delivery carries its lease and is not claimable again while it runs."""
    await env.outbox.enqueue("t-1", "http://a/", "build.completed", PAYLOAD)
    claimed = await _claim_one(env.outbox, "w1")
    assert claimed.lease_owner == "w1"
    assert claimed.lease_token == 1
    assert claimed.lease_expires_at == T0 + timedelta(seconds=30)
    assert await env.another().claim_due("w2", limit=10, lease_s=30) == []
    # Not claimable before the lease runs out: that is when it is next due for anyone.
    assert await env.outbox.next_attempt_at() == T0 + timedelta(seconds=30)


async def test_expired_lease_is_reclaimed_and_fences_the_old_owner(env: Env) -> None:
    """After the lease expires another owner claims it; the old owner can no longer record."""
    await env.outbox.enqueue("t-1", "http://a/", "build.completed", PAYLOAD)
    stale = await _claim_one(env.outbox, "dead")
    env.clock.advance(31)
    fresh = await _claim_one(env.another(), "alive")
    assert fresh.id == stale.id
    assert fresh.lease_token == stale.lease_token + 1
    with pytest.raises(LeaseLostError):
        await env.outbox.record_attempt(stale, _attempt(AttemptOutcome.DELIVERED, status_code=200))
    done = await env.outbox.record_attempt(
        fresh, _attempt(AttemptOutcome.DELIVERED, status_code=200)
    )
    assert done.status is DeliveryStatus.DELIVERED
    assert [a.number for a in done.history] == [1]


async def test_not_yet_due_is_not_claimed(env: Env) -> None:
    """A retry scheduled in the future is claimed only once its time has come."""
    await env.outbox.enqueue("t-1", "http://a/", "build.completed", PAYLOAD)
    claimed = await _claim_one(env.outbox)
    retry_at = T0 + timedelta(seconds=10)
    updated = await env.outbox.record_attempt(
        claimed,
        _attempt(AttemptOutcome.RETRY, status_code=500, error="HTTP 500"),
        retry_at=retry_at,
    )
    assert updated.status is DeliveryStatus.PENDING
    assert updated.next_attempt_at == retry_at
    assert updated.lease_owner is None
    assert await env.outbox.claim_due("w1", limit=10, lease_s=30) == []
    assert await env.outbox.next_attempt_at() == retry_at
    env.clock.advance(10)
    again = await _claim_one(env.outbox)
    assert again.attempts == 1


async def test_attempts_are_recorded_in_order_with_their_details(env: Env) -> None:
    """Every attempt keeps its time, status or error and duration; the last one is final."""
    delivery = await env.outbox.enqueue("t-1", "http://a/", "build.completed", PAYLOAD)
    first = await _claim_one(env.outbox)
    await env.outbox.record_attempt(
        first, _attempt(AttemptOutcome.RETRY, error="ConnectError: refused"), retry_at=T0
    )
    second = await _claim_one(env.outbox)
    await env.outbox.record_attempt(
        second, _attempt(AttemptOutcome.RETRY, status_code=503, error="HTTP 503"), retry_at=T0
    )
    third = await _claim_one(env.outbox)
    env.clock.advance(5)
    final = await env.outbox.record_attempt(
        third, _attempt(AttemptOutcome.DELIVERED, status_code=204)
    )
    assert final.status is DeliveryStatus.DELIVERED
    assert final.finished_at == T0 + timedelta(seconds=5)
    assert final.attempts == 3
    assert final.last_status_code == 204
    history = (await env.outbox.get(delivery.id)).history
    assert [(a.number, a.outcome, a.status_code, a.error) for a in history] == [
        (1, AttemptOutcome.RETRY, None, "ConnectError: refused"),
        (2, AttemptOutcome.RETRY, 503, "HTTP 503"),
        (3, AttemptOutcome.DELIVERED, 204, None),
    ]
    assert all(a.duration_ms == 12 and a.started_at == T0 for a in history)
    assert await env.outbox.claim_due("w1", limit=10, lease_s=30) == []


async def test_final_outcomes_fail_the_delivery(env: Env) -> None:
    """``gave_up`` and ``refused`` end a delivery as failed; a final delivery is not claimed."""
    for outcome in (AttemptOutcome.GAVE_UP, AttemptOutcome.REFUSED):
        await env.outbox.enqueue(f"t-{outcome}", "http://a/", "build.completed", PAYLOAD)
        claimed = await _claim_one(env.outbox)
        done = await env.outbox.record_attempt(claimed, _attempt(outcome, error="no"))
        assert done.status is DeliveryStatus.FAILED
        assert done.finished_at == T0
        with pytest.raises(LeaseLostError):  # a final delivery cannot be recorded again
            await env.outbox.record_attempt(claimed, _attempt(outcome))
    assert await env.outbox.count(DeliveryStatus.FAILED) == 2
    assert await env.outbox.count(DeliveryStatus.PENDING) == 0
    assert await env.outbox.next_attempt_at() is None


async def test_retry_needs_a_time(env: Env) -> None:
    """A retry without ``retry_at`` (or a final outcome with one) is a programming error."""
    await env.outbox.enqueue("t-1", "http://a/", "build.completed", PAYLOAD)
    claimed = await _claim_one(env.outbox)
    with pytest.raises(ValueError, match="retry_at"):
        await env.outbox.record_attempt(claimed, _attempt(AttemptOutcome.RETRY))
    with pytest.raises(ValueError, match="retry_at"):
        await env.outbox.record_attempt(claimed, _attempt(AttemptOutcome.DELIVERED), retry_at=T0)


async def test_release_makes_it_claimable_at_once(env: Env) -> None:
    """A released delivery is claimable again without waiting for its lease."""
    await env.outbox.enqueue("t-1", "http://a/", "build.completed", PAYLOAD)
    claimed = await _claim_one(env.outbox, "stopping")
    await env.outbox.release(claimed)
    again = await _claim_one(env.another(), "other")
    assert again.attempts == 0
    await env.outbox.release(claimed)  # stale release: silently ignored
    assert await env.outbox.claim_due("x", limit=10, lease_s=30) == []


async def test_list_for_task_and_oldest_due_first(env: Env) -> None:
    """Deliveries are listed per task in order; claims take the oldest due first, up to limit."""
    ids = []
    for n in range(3):
        env.clock.advance(1)
        ids.append(
            (await env.outbox.enqueue("t-1", f"http://a/{n}", "build.completed", PAYLOAD)).id
        )
    await env.outbox.enqueue("t-2", "http://b/", "build.completed", PAYLOAD)
    assert [d.id for d in await env.outbox.list_for_task("t-1")] == ids
    assert await env.outbox.list_for_task("nope") == []
    claimed = await env.outbox.claim_due("w", limit=2, lease_s=30)
    assert [d.id for d in claimed] == ids[:2]
    with pytest.raises(NotFoundError):
        await env.outbox.get("missing")


async def test_concurrent_claimers_never_share_a_delivery(env: Env) -> None:
    """Many claimers racing over many deliveries each get disjoint sets covering all of them."""
    for n in range(40):
        await env.outbox.enqueue(f"t-{n}", "http://a/", "build.completed", PAYLOAD)
    outboxes = [env.another() for _ in range(4)]

    async def drain(outbox: CallbackOutbox, owner: str) -> list[str]:
        got: list[str] = []
        while batch := await outbox.claim_due(owner, limit=3, lease_s=30):
            got.extend(d.id for d in batch)
        return got

    results = await asyncio.gather(*(drain(o, f"w{i}") for i, o in enumerate(outboxes)))
    every = [i for r in results for i in r]
    assert len(every) == 40
    assert len(set(every)) == 40
