"""Sending build callbacks: the :class:`CallbackDispatcher` and the signing key.

A callback travels in two steps, so that none is lost:

1. ``enqueue`` writes it to the outbox (the ``CallbackOutbox`` port) — durably, before
   anything is sent — and wakes the dispatcher of this process;
2. the dispatcher claims due deliveries with a lease, POSTs each (signed), records the
   attempt, and schedules the next one with exponential backoff and full jitter until the
   retry period since enqueue has passed; then it gives up (``failed``).

Delivery is at least once: a process that dies mid-send leaves its rows leased; once the
lease expires any dispatcher on the same database claims and sends them again, under the
same ``X-Forgeline-Delivery`` id, so receivers can drop duplicates.

Security of the connection (see ``services.callback_policy``): before every attempt the
host is resolved and every address checked; the request then goes to one of those checked
addresses — the URL's host is replaced by the address, ``Host`` and TLS SNI/certificate
checks still use the name — so a DNS answer that changes between check and connect (DNS
rebinding) is never used. Redirects are not followed, proxies from the environment are
ignored (``trust_env=False``), and connections are not kept alive (a pooled TLS connection
to an address must never serve another host name than the one it was verified for).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx
import structlog

from forgeline import __version__
from forgeline.domain.backoff import Backoff
from forgeline.domain.callbacks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
    AttemptOutcome,
    CallbackDelivery,
    DeliveryAttempt,
    sign,
    sign_webhook,
)
from forgeline.domain.clock import utcnow
from forgeline.domain.errors import (
    ConfigurationError,
    ForgelineError,
    InvalidCallbackUrlError,
    LeaseLostError,
)
from forgeline.domain.secrets import Secret
from forgeline.logs import Redactor
from forgeline.ports.callbacks import CallbackOutbox
from forgeline.services.callback_policy import (
    CallbackUrlPolicy,
    CheckedUrl,
    ResolutionError,
)
from forgeline.services.keyfile import ensure_key_file
from forgeline.services.pool import LeasedPool

_log = structlog.get_logger("forgeline.callbacks")

#: Name of the generated signing key file in the data directory.
CALLBACK_KEY_FILE: Final = "callback.key"
#: Longest wait for one outbox operation; a stuck database must not stall the loop forever.
DATABASE_TIMEOUT_S: Final = 30.0
#: Excerpt of a non-2xx answer kept in the attempt's error.
_EXCERPT_CHARS: Final = 200

Observer = Callable[[CallbackDelivery, DeliveryAttempt], None]


@dataclass(frozen=True, slots=True)
class DispatcherConfig:
    """The dispatcher's knobs; every one bounds something.

    - ``retry_period_s``: after this long since enqueue, a failing delivery is given up
      (``FORGELINE_CALLBACK_RETRY_PERIOD_S``).
    - ``backoff_base_s``/``backoff_cap_s``: the retry delay after attempt *n* is uniform in
      ``[0, min(cap, base·2^(n-1))]`` (full jitter); a ``Retry-After`` of a 429/503 answer
      raises it (up to the cap).
    - ``request_timeout_s``: the whole attempt — connect, send, read the answer — ends
      after this long; ``connect_timeout_s`` bounds each connection attempt within it.
    - ``lease_s``: how long a claimed delivery is ours; must exceed the request timeout
      by a margin, since a sender whose lease ran out can no longer record its attempt.
    - ``poll_interval_s``: longest sleep between looks at the outbox (deliveries enqueued
      by other processes, retries coming due) when nothing wakes the dispatcher earlier.
    - ``concurrency``: deliveries in flight at once.
    - ``max_response_bytes``: at most this much of a non-2xx answer is read (for the
      excerpt kept with the attempt), then it is closed; a 2xx answer's body is not read.
    - ``stop_grace_s``: on stop, in-flight deliveries may finish for this long, then they
      are cancelled and their rows released for the next dispatcher.
    """

    retry_period_s: float = 24 * 3600.0
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 600.0
    request_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    lease_s: float = 60.0
    poll_interval_s: float = 5.0
    concurrency: int = 8
    max_response_bytes: int = 64 * 1024
    stop_grace_s: float = 10.0

    def __post_init__(self) -> None:
        positive = {
            "retry_period_s": self.retry_period_s,
            "backoff_cap_s": self.backoff_cap_s,
            "request_timeout_s": self.request_timeout_s,
            "connect_timeout_s": self.connect_timeout_s,
            "lease_s": self.lease_s,
            "poll_interval_s": self.poll_interval_s,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigurationError(f"callback dispatcher: {name} must be > 0")
        if self.backoff_base_s < 0 or self.stop_grace_s < 0:
            raise ConfigurationError("callback dispatcher: backoff base and grace must be >= 0")
        if self.concurrency < 1 or self.max_response_bytes < 0:
            raise ConfigurationError("callback dispatcher: concurrency must be >= 1")
        if self.lease_s <= self.request_timeout_s:
            raise ConfigurationError(
                "callback dispatcher: lease_s must exceed request_timeout_s, or a slow "
                "receiver would let another dispatcher send the same delivery concurrently"
            )


def ensure_callback_secret(data_dir: Path, configured: str | None = None) -> Secret:
    """The callback signing key: ``configured`` if set, else the data directory's key file
    ``callback.key``, created owner-only on first use (:func:`ensure_key_file`)."""
    return ensure_key_file(
        data_dir / CALLBACK_KEY_FILE, configured=configured, name="callback-secret"
    )


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one POST produced: an HTTP status, or an error (never both empty)."""

    status_code: int | None
    error: str | None
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class CallbackDispatcher:
    """Delivers the outbox's callbacks: a long-running, owned task per process.

    Use ``async with dispatcher:`` (or ``start()``/``stop()``) around the process's life;
    call :meth:`enqueue` (or ``notify()`` after enqueuing through the outbox directly) when
    a build finishes. Several dispatchers — in several processes — may share one database:
    leases keep them from sending the same delivery at once.
    """

    def __init__(
        self,
        outbox: CallbackOutbox,
        policy: CallbackUrlPolicy,
        secret: Secret,
        *,
        config: DispatcherConfig | None = None,
        owner: str | None = None,
        verify: Any = True,
        transport: httpx.AsyncBaseTransport | None = None,
        redactor: Redactor | None = None,
        observer: Observer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Wire the dispatcher; nothing starts until :meth:`start`.

        ``verify`` is handed to httpx (``True``, or an ``ssl.SSLContext`` trusting a private
        CA); ``transport`` replaces httpx's network transport (tests); ``observer`` is called
        after every recorded attempt (metrics); ``rng`` draws the jitter.
        """
        self.outbox = outbox
        self.policy = policy
        self.config = config or DispatcherConfig()
        self.owner = owner or _default_owner()
        self._secret = secret
        self._verify = verify
        self._transport = transport
        self._redactor = redactor
        self._observer = observer
        self._rng = rng or random.SystemRandom()
        # Full jitter: many deliveries that failed together (a receiver back up) must
        # not come back in waves.
        self._backoff = Backoff(
            self.config.backoff_base_s, self.config.backoff_cap_s, jitter="full"
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._pool = LeasedPool(
            _Outbox(self),
            self._deliver_logged,
            name="callback",
            concurrency=self.config.concurrency,
            idle_s=self.config.poll_interval_s,
        )

    # --- life cycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`, while the loop is alive."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the delivery loop (idempotent)."""
        if self._task is not None:
            return
        self._stop = asyncio.Event()
        self._client = self._make_client()
        self._task = asyncio.create_task(
            self._pool.serve(self._stop), name=f"callback-dispatcher:{self.owner}"
        )
        self._task.add_done_callback(_loop_ended)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop claiming; let in-flight deliveries finish within ``grace_s``, cancel the rest.

        Cancelled deliveries are released so another dispatcher may send them at once;
        a delivery cancelled after its request went out is sent again (at least once).
        Idempotent; bounded by ``grace_s`` plus a short release.
        """
        grace = self.config.stop_grace_s if grace_s is None else grace_s
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            # The loop only waits (claim, sleep); it exits at its next wake-up.
            _done, pending = await asyncio.wait({task}, timeout=max(grace, 1.0))
            if pending:
                task.cancel()
                await asyncio.wait({task})
        await self._pool.drain(grace)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> CallbackDispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- producing ---------------------------------------------------------------------------

    async def enqueue(
        self,
        task_id: str,
        url: str,
        event: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> CallbackDelivery:
        """Store a delivery in the outbox and wake the loop; returns the stored delivery.

        The URL should have passed ``CallbackUrlPolicy.check`` when the build was requested;
        it is checked again before every attempt anyway.
        """
        delivery = await self.outbox.enqueue(
            task_id, url, event, payload, idempotency_key=idempotency_key
        )
        self.notify()
        return delivery

    async def deliveries(self, task_id: str) -> list[CallbackDelivery]:
        """The callback deliveries of ``task_id`` (what ``GET /tasks/{id}`` shows)."""
        return await self.outbox.list_for_task(task_id)

    def notify(self) -> None:
        """Wake the loop now (a delivery was enqueued in this process).

        Call it from the dispatcher's event loop (``asyncio.Event`` is not thread-safe);
        from another thread use ``loop.call_soon_threadsafe(dispatcher.notify)``.
        """
        self._pool.notify()

    async def _deliver_logged(self, claimed: CallbackDelivery) -> None:
        try:
            await self.deliver(claimed)
        except (ForgelineError, TimeoutError) as exc:
            # Recording failed (database down): the lease expires and the row is retried.
            _log.warning(
                "callback attempt not recorded",
                delivery=claimed.id,
                url=claimed.display_url,
                error=str(exc),
            )

    # --- one attempt -------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim the due deliveries (up to the concurrency) and attempt each; how many.

        For tools and tests that drive the dispatcher step by step without :meth:`start`.
        """
        claimed = await self.outbox.claim_due(
            self.owner, limit=self.config.concurrency, lease_s=self.config.lease_s
        )
        if claimed:
            await asyncio.gather(*(self.deliver(delivery) for delivery in claimed))
        return len(claimed)

    async def deliver(self, claimed: CallbackDelivery) -> CallbackDelivery | None:
        """Attempt one claimed delivery and record the attempt; the delivery's new state.

        Returns ``None`` when the lease was lost meanwhile (another dispatcher owns the
        delivery now and records its own attempts).
        """
        started_at = utcnow()
        started = time.monotonic()
        refused = False
        try:
            checked = await self.policy.resolve_and_check(claimed.url)
        except InvalidCallbackUrlError as exc:
            refused = True
            answer = _Answer(None, f"refused: {exc.reason}")
        except ResolutionError as exc:
            answer = _Answer(None, f"DNS: {exc.reason}")
        else:
            answer = await self._post(claimed, checked)
        duration_ms = int((time.monotonic() - started) * 1000)

        number = claimed.attempts + 1
        retry_at: datetime | None = None
        if answer.ok:
            outcome = AttemptOutcome.DELIVERED
        elif refused:
            outcome = AttemptOutcome.REFUSED
        else:
            now = utcnow()
            give_up_at = claimed.created_at + timedelta(seconds=self.config.retry_period_s)
            if now >= give_up_at:
                outcome = AttemptOutcome.GAVE_UP
            else:
                outcome = AttemptOutcome.RETRY
                delay = self._backoff.delay(number, self._rng)
                if answer.retry_after_s is not None:
                    delay = max(delay, min(answer.retry_after_s, self.config.backoff_cap_s))
                # The last try happens at the deadline, not after it.
                retry_at = min(now + timedelta(seconds=delay), give_up_at)
        attempt = DeliveryAttempt(
            number=number,
            started_at=started_at,
            duration_ms=duration_ms,
            outcome=outcome,
            status_code=answer.status_code,
            error=self._scrub(answer.error, claimed.url),
        )
        try:
            async with asyncio.timeout(DATABASE_TIMEOUT_S):
                updated = await self.outbox.record_attempt(claimed, attempt, retry_at=retry_at)
        except LeaseLostError:
            _log.warning(
                "callback lease lost before the attempt was recorded",
                delivery=claimed.id,
                attempt=number,
            )
            return None
        _log.info(
            "callback attempt",
            delivery=claimed.id,
            task_id=claimed.task_id,
            event_name=claimed.event,
            url=claimed.display_url,
            attempt=number,
            outcome=outcome.value,
            status_code=answer.status_code,
            error=attempt.error,
            duration_ms=duration_ms,
            retry_at=retry_at.isoformat() if retry_at else None,
        )
        if self._observer is not None:
            self._observer(updated, attempt)
        return updated

    def _headers(self, claimed: CallbackDelivery, checked: CheckedUrl) -> dict[str, str]:
        target = checked.target
        default_port = 443 if target.scheme == "https" else 80
        host = f"[{target.host}]" if ":" in target.host else target.host
        # Signed anew at every attempt: a receiver refuses old timestamps, and a retry
        # may come hours after the first try.
        timestamp = int(time.time())
        return {
            "Host": host if target.port == default_port else f"{host}:{target.port}",
            "Content-Type": "application/json",
            "User-Agent": f"forgeline/{__version__}",
            SIGNATURE_HEADER: sign(claimed.body, self._secret),
            DELIVERY_HEADER: claimed.id,
            EVENT_HEADER: claimed.event,
            WEBHOOK_ID_HEADER: claimed.id,
            WEBHOOK_TIMESTAMP_HEADER: str(timestamp),
            WEBHOOK_SIGNATURE_HEADER: sign_webhook(
                claimed.id, timestamp, claimed.body, self._secret
            ),
        }

    async def _post(self, claimed: CallbackDelivery, checked: CheckedUrl) -> _Answer:
        client = self._client
        owned = client is None
        if client is None:  # run_once()/deliver() without start()
            client = self._make_client()
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                return await self._post_to_addresses(client, claimed, checked)
        except TimeoutError:
            return _Answer(None, f"timed out after {self.config.request_timeout_s:g}s")
        finally:
            if owned:
                await client.aclose()

    async def _post_to_addresses(
        self, client: httpx.AsyncClient, claimed: CallbackDelivery, checked: CheckedUrl
    ) -> _Answer:
        target = checked.target
        headers = self._headers(claimed, checked)
        extensions: dict[str, Any] = {}
        if target.scheme == "https" and target.literal is None:
            # TLS must name (SNI) and verify the host name, not the address we dial.
            extensions["sni_hostname"] = target.host
        last = _Answer(None, "no address to connect to")
        for address in checked.addresses:
            url = httpx.URL(target.url).copy_with(host=str(address))
            try:
                async with client.stream(
                    "POST", url, content=claimed.body, headers=headers, extensions=extensions
                ) as response:
                    if response.is_success:
                        # Delivered: the answer's body is of no use, and a receiver that
                        # streams it slowly must not turn a success into a timeout.
                        return _Answer(response.status_code, None)
                    excerpt = await self._read_bounded(response)
                    return _answer_of(response, excerpt)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing was sent: the next address of the name may answer.
                last = _Answer(None, _describe(exc))
            except httpx.TimeoutException as exc:
                return _Answer(None, _describe(exc))
            except httpx.HTTPError as exc:
                return _Answer(None, _describe(exc))
        return last

    async def _read_bounded(self, response: httpx.Response) -> bytes:
        limit = self.config.max_response_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            chunks.append(chunk[: limit - size])
            size += len(chunk)
            if size >= limit:
                break  # closing the response drops the rest of the answer
        return b"".join(chunks)

    def _make_client(self) -> httpx.AsyncClient:
        timeout = httpx.Timeout(
            self.config.request_timeout_s, connect=self.config.connect_timeout_s
        )
        return httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=timeout,
            verify=self._verify,
            transport=self._transport,
            limits=httpx.Limits(
                max_connections=self.config.concurrency * 2, max_keepalive_connections=0
            ),
        )

    def _scrub(self, text: str | None, url: str) -> str | None:
        """Keep the URL's credentials and query out of a stored or logged error."""
        if text is None:
            return None
        for secret_part in _secret_parts(url):
            text = text.replace(secret_part, "[REDACTED]")
        return self._redactor.redact(text) if self._redactor is not None else text


class _Outbox:
    """The outbox as the dispatcher's pool sees it: deliveries claimed with a lease."""

    def __init__(self, dispatcher: CallbackDispatcher) -> None:
        self._dispatcher = dispatcher

    def key(self, claimed: CallbackDelivery) -> str:
        """The delivery's id."""
        return claimed.id

    async def claim(self, limit: int) -> list[CallbackDelivery]:
        """Up to ``limit`` due deliveries, leased (a stuck database is bounded)."""
        if limit <= 0:
            return []
        dispatcher = self._dispatcher
        async with asyncio.timeout(DATABASE_TIMEOUT_S):
            return await dispatcher.outbox.claim_due(
                dispatcher.owner, limit=limit, lease_s=dispatcher.config.lease_s
            )

    async def release(self, claimed: CallbackDelivery) -> None:
        """Give the delivery back for the next dispatcher."""
        await self._dispatcher.outbox.release(claimed)

    async def wait_for_work(self, timeout_s: float) -> None:
        """Sleep until the next retry comes due, ``timeout_s`` at the longest (deliveries
        enqueued in this process wake the pool through ``notify``)."""
        try:
            async with asyncio.timeout(DATABASE_TIMEOUT_S):
                due = await self._dispatcher.outbox.next_attempt_at()
        except (ForgelineError, TimeoutError):
            due = None
        if due is not None:
            until = (due - utcnow()).total_seconds()
            timeout_s = min(timeout_s, max(until, 0.0) + 0.005)
        await asyncio.sleep(timeout_s)


def _loop_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("callback dispatcher stopped", task=task.get_name(), exc_info=task.exception())


def _secret_parts(url: str) -> list[str]:
    parts = httpx.URL(url)
    found = [url]
    if parts.query:
        found.append(parts.query.decode("ascii", "replace"))
    if parts.userinfo:
        found.append(parts.userinfo.decode("ascii", "replace"))
    return [part for part in found if len(part) >= 4]


def _answer_of(response: httpx.Response, excerpt: bytes) -> _Answer:
    code = response.status_code
    if 200 <= code < 300:
        return _Answer(code, None)
    text = excerpt.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    detail = f"HTTP {code}"
    if 300 <= code < 400:
        detail += " (redirects are not followed)"
    if text:
        detail += f": {text[:_EXCERPT_CHARS]}"
    return _Answer(code, detail, _retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    if response.status_code not in (429, 503):
        return None
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    return None  # an HTTP date is rare for webhooks; the backoff applies


def _describe(exc: httpx.HTTPError) -> str:
    detail = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {detail}" if detail else name
