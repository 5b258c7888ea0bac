"""The CallbackOutbox port: durable, leased, fenced callback deliveries."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from forgeline.domain.callbacks import CallbackDelivery, DeliveryAttempt, DeliveryStatus


class CallbackOutbox(Protocol):
    """Where callbacks wait until they are delivered or given up (the transactional outbox).

    - ``enqueue`` writes the delivery durably *before* anything is sent, so a callback
      survives a crash or restart; it is due at once. With an ``idempotency_key`` already
      used it returns the existing delivery (a build finished twice by two workers still
      calls back once). The body is the canonical JSON of ``payload`` and never changes.
    - ``claim_due`` leases up to ``limit`` pending deliveries whose ``next_attempt_at`` has
      passed and whose lease (if any) has expired, oldest due first, to ``owner`` for
      ``lease_s`` seconds with a fresh ``lease_token``. Two concurrent claimers — in one
      process or on two machines — never receive the same delivery while its lease runs.
      A delivery claimed by a process that died is claimable again once its lease expires
      (at-least-once delivery).
    - ``record_attempt`` stores the attempt and moves the delivery on according to the
      attempt's outcome: ``delivered``/``gave_up``/``refused`` are final, ``retry`` needs
      ``retry_at``. It is fenced: if ``claimed.lease_token`` is no longer the delivery's
      current token (the lease expired and another sender claimed it), nothing is written
      and ``LeaseLostError`` is raised.
    - ``release`` gives a claimed delivery back unchanged (a sender stopping mid-way);
      fenced the same way but silent when the lease is already gone.
    - Reads never lease. Database errors surface as ``StorageError``; every call is one
      short transaction, so cancelling the caller never leaves a half-written row.
    """

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
        ...

    async def claim_due(self, owner: str, *, limit: int, lease_s: float) -> list[CallbackDelivery]:
        """Lease up to ``limit`` due deliveries to ``owner``; empty when none is due."""
        ...

    async def record_attempt(
        self,
        claimed: CallbackDelivery,
        attempt: DeliveryAttempt,
        *,
        retry_at: datetime | None = None,
    ) -> CallbackDelivery:
        """Store ``attempt`` (numbered ``claimed.attempts + 1``) and the delivery's new state."""
        ...

    async def release(self, claimed: CallbackDelivery) -> None:
        """Drop the lease of ``claimed`` without recording an attempt."""
        ...

    async def get(self, delivery_id: str) -> CallbackDelivery:
        """The delivery with its attempt history, or ``NotFoundError``."""
        ...

    async def list_for_task(self, task_id: str) -> list[CallbackDelivery]:
        """Every delivery of the task, oldest first, each with its attempt history."""
        ...

    async def next_attempt_at(self) -> datetime | None:
        """When a pending delivery next becomes claimable; ``None`` if none is pending.

        That is the earliest, over pending deliveries, of the later of ``next_attempt_at``
        and the lease's expiry: a delivery another sender holds is not due for us before
        its lease runs out (so a dispatcher never spins on a row it cannot claim).
        """
        ...

    async def count(self, status: DeliveryStatus) -> int:
        """How many deliveries are in ``status`` (metrics)."""
        ...
