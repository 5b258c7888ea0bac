"""Callbacks end to end: a real dispatcher, a real database, a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from forgeline import __version__
from forgeline.adapters.callbacks.outbox import SqlCallbackOutbox
from forgeline.adapters.sql.database import Database, PostgresDatabase, SqliteDatabase
from forgeline.adapters.sql.migrate import migrate
from forgeline.domain.callbacks import (
    BUILD_COMPLETED,
    AttemptOutcome,
    CallbackDelivery,
    DeliveryAttempt,
    DeliveryStatus,
    IPAddress,
    canonical_body,
    verify,
)
from forgeline.domain.secrets import Secret
from forgeline.entrypoints.api.schemas import CallbackOut
from forgeline.ports.callbacks import CallbackOutbox
from forgeline.services.callback_policy import CallbackUrlPolicy
from forgeline.services.callbacks import CallbackDispatcher, DispatcherConfig
from tests.support.callback_receiver import Behaviour, CallbackReceiver, Reply
from tests.support.tls import self_signed

SECRET = "test-callback-secret-0123456789"
PAYLOAD = {
    "task_id": "t-1",
    "project_id": "myapp",
    "status": "completed",
    "result": {
        "output": "Done — a page",
        "artifacts": {
            "commit_sha": "abc123",
            "deploy_url": "https://myapp.example",
            "pipeline": 42,
        },
    },
}
FAST = DispatcherConfig(
    retry_period_s=60.0,
    backoff_base_s=0.05,
    backoff_cap_s=0.2,
    request_timeout_s=2.0,
    connect_timeout_s=1.0,
    lease_s=10.0,
    poll_interval_s=0.5,
    concurrency=4,
    stop_grace_s=2.0,
)


class Attempts:
    """The dispatcher's observer: every recorded attempt, awaitable without sleeping."""

    def __init__(self) -> None:
        self.items: list[tuple[CallbackDelivery, DeliveryAttempt]] = []
        self._changed = asyncio.Event()

    def __call__(self, delivery: CallbackDelivery, attempt: DeliveryAttempt) -> None:
        self.items.append((delivery, attempt))
        self._changed.set()

    async def until(
        self, predicate: Callable[[list[tuple[CallbackDelivery, DeliveryAttempt]]], bool]
    ) -> None:
        """Wait (at most 20 s) until ``predicate`` holds for the attempts so far."""
        async with asyncio.timeout(20):
            while not predicate(self.items):
                self._changed.clear()
                await self._changed.wait()

    async def final(self, count: int = 1) -> None:
        """Wait until ``count`` deliveries reached a final state."""
        await self.until(lambda items: sum(d.status.is_final for d, _ in items) >= count)


async def _sqlite(path: Path) -> SqliteDatabase:
    db = SqliteDatabase(path)
    await db.open()
    await migrate(db)
    return db


def _outbox(db: Database) -> CallbackOutbox:
    return SqlCallbackOutbox(db)


def _fixed_resolver(
    mapping: dict[str, Iterable[str]],
) -> Callable[[str, int], Any]:
    async def resolve(host: str, _port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in mapping[host]]

    return resolve


@asynccontextmanager
async def running(
    db: Database,
    *,
    config: DispatcherConfig = FAST,
    allowed: Iterable[str] = ("127.0.0.1",),
    policy: CallbackUrlPolicy | None = None,
    owner: str | None = None,
    verify_tls: Any = True,
    attempts: Attempts | None = None,
) -> AsyncIterator[tuple[CallbackDispatcher, Attempts]]:
    """A started dispatcher on ``db`` and its attempt log; stopped on exit."""
    attempts = attempts or Attempts()
    dispatcher = CallbackDispatcher(
        _outbox(db),
        policy or CallbackUrlPolicy(allowed),
        Secret(SECRET),
        config=config,
        owner=owner,
        observer=attempts,
        verify=verify_tls,
    )
    async with dispatcher:
        yield dispatcher, attempts


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    """A migrated SQLite database."""
    database = await _sqlite(tmp_path / "forgeline.db")
    try:
        yield database
    finally:
        await database.aclose()


@pytest.fixture
def receiver() -> Iterable[CallbackReceiver]:
    """A receiver on 127.0.0.1 that verifies signatures with the test secret."""
    with CallbackReceiver(SECRET) as rec:
        yield rec


async def test_delivered_with_signature_and_headers(
    db: SqliteDatabase, receiver: CallbackReceiver
) -> None:
    """A delivery arrives once, signed over its exact body, with every documented header."""
    async with running(db) as (dispatcher, attempts):
        delivery = await dispatcher.enqueue(
            "t-1", receiver.url("/hook?token=abc"), BUILD_COMPLETED, PAYLOAD
        )
        await attempts.final()
    (got,) = receiver.received
    assert got.path == "/hook?token=abc"
    assert got.body == canonical_body(PAYLOAD) == delivery.body
    assert json.loads(got.body) == PAYLOAD
    assert got.signature_valid
    assert verify(got.body, SECRET, got.header("X-Forgeline-Signature"))
    assert not verify(got.body, "another-secret", got.header("X-Forgeline-Signature"))
    assert got.header("Content-Type") == "application/json"
    assert got.header("X-Forgeline-Delivery") == delivery.id
    assert got.header("X-Forgeline-Event") == "build.completed"
    assert got.header("User-Agent") == f"forgeline/{__version__}"
    assert got.header("Host") == f"127.0.0.1:{receiver.port}"
    (stored,) = await dispatcher.outbox.list_for_task("t-1")
    assert stored.status is DeliveryStatus.DELIVERED
    (attempt,) = stored.history
    assert (attempt.outcome, attempt.status_code, attempt.error) == (
        AttemptOutcome.DELIVERED,
        200,
        None,
    )
    assert attempt.duration_ms >= 0
    view = CallbackOut.of(stored).model_dump(mode="json")
    assert view["url"] == receiver.url("/hook")  # the query (a token) is not shown
    assert view["status"] == "delivered"
    assert view["next_attempt_at"] is None
    assert [(a["number"], a["status_code"], a["outcome"]) for a in view["attempts"]] == [
        (1, 200, "delivered")
    ]
    assert view["created_at"].endswith("Z")


async def test_receiver_down_then_up(db: SqliteDatabase, receiver: CallbackReceiver) -> None:
    """While the receiver is down attempts fail and are recorded; once it is up, delivered."""
    receiver.down()
    async with running(db) as (dispatcher, attempts):
        delivery = await dispatcher.enqueue("t-1", receiver.url(), BUILD_COMPLETED, PAYLOAD)
        await attempts.until(lambda items: len(items) >= 3)
        receiver.up()
        await attempts.final()
    stored = await dispatcher.outbox.get(delivery.id)
    assert stored.status is DeliveryStatus.DELIVERED
    assert len(stored.history) >= 4
    *failed, last = stored.history
    assert all(a.outcome is AttemptOutcome.RETRY and a.status_code is None for a in failed)
    assert all(a.error and "ConnectError" in a.error for a in failed)
    assert last.outcome is AttemptOutcome.DELIVERED
    assert [a.number for a in stored.history] == list(range(1, len(stored.history) + 1))
    assert len(receiver.received) == 1
    assert receiver.received[0].header("X-Forgeline-Delivery") == delivery.id


async def test_500s_then_200(db: SqliteDatabase, receiver: CallbackReceiver) -> None:
    """Server errors are retried with the same delivery id until the receiver answers 2xx."""
    receiver.script(500, 503, 204)
    async with running(db) as (dispatcher, attempts):
        delivery = await dispatcher.enqueue("t-1", receiver.url(), BUILD_COMPLETED, PAYLOAD)
        await attempts.final()
    stored = await dispatcher.outbox.get(delivery.id)
    assert [a.status_code for a in stored.history] == [500, 503, 204]
    assert stored.history[0].error == 'HTTP 500: {"error":"scripted"}'
    assert {r.header("X-Forgeline-Delivery") for r in receiver.received} == {delivery.id}
    assert all(r.signature_valid and r.body == delivery.body for r in receiver.received)


async def test_gives_up_after_the_retry_period(
    db: SqliteDatabase, receiver: CallbackReceiver
) -> None:
    """A receiver that keeps failing is given up once the retry period since enqueue passed."""
    receiver.default = 500
    config = DispatcherConfig(
        retry_period_s=0.6, backoff_base_s=0.05, backoff_cap_s=0.1, request_timeout_s=2.0,
        lease_s=10.0, poll_interval_s=0.5,
    )  # fmt: skip
    started = time.monotonic()
    async with running(db, config=config) as (dispatcher, attempts):
        delivery = await dispatcher.enqueue("t-1", receiver.url(), BUILD_COMPLETED, PAYLOAD)
        await attempts.final()
    stored = await dispatcher.outbox.get(delivery.id)
    assert stored.status is DeliveryStatus.FAILED
    assert time.monotonic() - started >= 0.6
    assert stored.history[-1].outcome is AttemptOutcome.GAVE_UP
    assert all(a.outcome is AttemptOutcome.RETRY for a in stored.history[:-1])
    assert len(stored.history) >= 2
    assert len(receiver.received) == len(stored.history)
    # The last attempt happened at the deadline, not long after it.
    assert stored.history[-1].started_at >= stored.created_at


async def test_timeouts_closed_connections_and_redirects_are_retried(
    db: SqliteDatabase, receiver: CallbackReceiver
) -> None:
    """A hung receiver times out, a dropped connection and a 302 are failures; all retried."""
    receiver.script(Behaviour.HANG, Behaviour.CLOSE, 302)
    config = DispatcherConfig(
        retry_period_s=60, backoff_base_s=0.01, backoff_cap_s=0.05, request_timeout_s=0.5,
        lease_s=5.0, poll_interval_s=0.5,
    )  # fmt: skip
    async with running(db, config=config) as (dispatcher, attempts):
        delivery = await dispatcher.enqueue("t-1", receiver.url(), BUILD_COMPLETED, PAYLOAD)
        await attempts.final()
    history = (await dispatcher.outbox.get(delivery.id)).history
    assert [a.outcome for a in history] == [AttemptOutcome.RETRY] * 3 + [AttemptOutcome.DELIVERED]
    assert history[0].error == "timed out after 0.5s"
    assert history[1].status_code is None
    assert history[1].error
    assert history[2].status_code == 302
    assert "redirects are not followed" in (history[2].error or "")
    assert [r.path for r in receiver.received] == ["/hook"] * 4


async def test_refused_url_is_never_called(db: SqliteDatabase, receiver: CallbackReceiver) -> None:
    """A loopback URL without an allow-list entry fails at once as refused, nothing is sent."""
    async with running(db, allowed=()) as (dispatcher, attempts):
        delivery = await dispatcher.enqueue("t-1", receiver.url(), BUILD_COMPLETED, PAYLOAD)
        await attempts.final()
    stored = await dispatcher.outbox.get(delivery.id)
    assert stored.status is DeliveryStatus.FAILED
    (attempt,) = stored.history
    assert attempt.outcome is AttemptOutcome.REFUSED
    assert "loopback" in (attempt.error or "")
    assert receiver.received == []


async def test_restart_resumes_pending_deliveries(
    tmp_path: Path, receiver: CallbackReceiver
) -> None:
    """A new dispatcher on the same database delivers what the stopped one left pending."""
    path = tmp_path / "forgeline.db"
    receiver.down()
    first_db = await _sqlite(path)
    try:
        async with running(first_db) as (dispatcher, attempts):
            delivery = await dispatcher.enqueue("t-1", receiver.url(), BUILD_COMPLETED, PAYLOAD)
            await attempts.until(lambda items: len(items) >= 1)
    finally:
        await first_db.aclose()
    receiver.up()
    second_db = await _sqlite(path)
    try:
        async with running(second_db) as (dispatcher, attempts):
            await attempts.final()
            stored = await dispatcher.outbox.get(delivery.id)
    finally:
        await second_db.aclose()
    assert stored.status is DeliveryStatus.DELIVERED
    assert stored.history[0].outcome is AttemptOutcome.RETRY
    assert len(receiver.received) == 1


async def test_delivery_claimed_by_a_dead_process_is_sent_after_its_lease(
    db: SqliteDatabase, receiver: CallbackReceiver
) -> None:
    """A row leased by a dead sender is sent once its lease expires, without busy polling."""
    outbox = _outbox(db)
    delivery = await outbox.enqueue("t-1", receiver.url(), BUILD_COMPLETED, PAYLOAD)
    (claimed,) = await outbox.claim_due("dead-process", limit=1, lease_s=1.0)
    claims = 0
    real_claim = outbox.claim_due

    async def counting_claim(owner: str, *, limit: int, lease_s: float) -> list[CallbackDelivery]:
        nonlocal claims
        claims += 1
        return await real_claim(owner, limit=limit, lease_s=lease_s)

    outbox.claim_due = counting_claim  # type: ignore[method-assign]
    attempts = Attempts()
    dispatcher = CallbackDispatcher(
        outbox, CallbackUrlPolicy(["127.0.0.1"]), Secret(SECRET), config=FAST, observer=attempts
    )
    async with dispatcher:
        await attempts.final()
    stored = await outbox.get(delivery.id)
    assert stored.status is DeliveryStatus.DELIVERED
    assert stored.lease_token == claimed.lease_token + 1
    assert len(receiver.received) == 1
    # It slept until the lease expiry instead of re-claiming in a tight loop meanwhile.
    assert claims <= 5


async def test_stop_is_bounded_and_releases_in_flight(
    db: SqliteDatabase, receiver: CallbackReceiver
) -> None:
    """Stopping during a hung request returns within the grace and frees the row at once."""
    receiver.script(Behaviour.HANG)
    config = DispatcherConfig(request_timeout_s=30, lease_s=120, stop_grace_s=0.2)
    dispatcher = CallbackDispatcher(
        _outbox(db), CallbackUrlPolicy(["127.0.0.1"]), Secret(SECRET), config=config
    )
    await dispatcher.start()
    delivery = await dispatcher.enqueue("t-1", receiver.url(), BUILD_COMPLETED, PAYLOAD)
    await receiver.wait_for(1)
    started = time.monotonic()
    await dispatcher.stop()
    assert time.monotonic() - started < 5
    assert not dispatcher.running
    stored = await dispatcher.outbox.get(delivery.id)
    assert stored.status is DeliveryStatus.PENDING
    assert stored.lease_owner is None
    assert stored.history == ()


async def test_connects_to_the_checked_address_and_rechecks_each_attempt(
    db: SqliteDatabase, receiver: CallbackReceiver
) -> None:
    """The name is resolved by the policy (not the HTTP client) and re-checked per attempt."""
    answers = iter([["127.0.0.1"], ["169.254.169.254"]])

    async def rebinding(host: str, _port: int) -> list[IPAddress]:
        assert host == "hooks.test"
        return [ipaddress.ip_address(a) for a in next(answers)]

    policy = CallbackUrlPolicy(["hooks.test"], resolver=rebinding)
    receiver.script(500)
    async with running(db, policy=policy) as (dispatcher, attempts):
        url = receiver.url(host="hooks.test")
        delivery = await dispatcher.enqueue("t-1", url, BUILD_COMPLETED, PAYLOAD)
        await attempts.final()
    (got,) = receiver.received
    assert got.header("Host") == f"hooks.test:{receiver.port}"
    history = (await dispatcher.outbox.get(delivery.id)).history
    assert [a.outcome for a in history] == [AttemptOutcome.RETRY, AttemptOutcome.REFUSED]
    assert "metadata" in (history[1].error or "")


async def test_https_verifies_the_name_while_dialing_the_address(
    db: SqliteDatabase, tmp_path: Path
) -> None:
    """Over TLS the certificate is checked for the URL's name (SNI) though the address is dialed."""
    server_ctx, client_ctx = self_signed(tmp_path, "hooks.test")
    policy = CallbackUrlPolicy(
        ["hooks.test"], resolver=_fixed_resolver({"hooks.test": ["127.0.0.1"]})
    )
    with CallbackReceiver(SECRET, ssl_context=server_ctx) as tls_receiver:
        async with running(db, policy=policy, verify_tls=client_ctx) as (dispatcher, attempts):
            good = await dispatcher.enqueue(
                "t-1", tls_receiver.url(host="hooks.test"), BUILD_COMPLETED, PAYLOAD
            )
            await attempts.final()
        assert len(tls_receiver.received) == 1
        assert tls_receiver.received[0].signature_valid
    stored = await dispatcher.outbox.get(good.id)
    assert stored.status is DeliveryStatus.DELIVERED


async def test_https_with_a_certificate_for_another_name_fails(
    db: SqliteDatabase, tmp_path: Path
) -> None:
    """A certificate that does not name the URL's host is refused (the attempt is retried)."""
    server_ctx, client_ctx = self_signed(tmp_path, "other.test")
    policy = CallbackUrlPolicy(
        ["hooks.test"], resolver=_fixed_resolver({"hooks.test": ["127.0.0.1"]})
    )
    with CallbackReceiver(SECRET, ssl_context=server_ctx) as tls_receiver:
        async with running(db, policy=policy, verify_tls=client_ctx) as (dispatcher, attempts):
            delivery = await dispatcher.enqueue(
                "t-1", tls_receiver.url(host="hooks.test"), BUILD_COMPLETED, PAYLOAD
            )
            await attempts.until(lambda items: len(items) >= 1)
        assert tls_receiver.received == []
    first = (await dispatcher.outbox.get(delivery.id)).history[0]
    assert first.outcome is AttemptOutcome.RETRY
    assert "CERTIFICATE_VERIFY_FAILED" in (first.error or "")


async def test_errors_never_show_url_secrets(
    db: SqliteDatabase, receiver: CallbackReceiver
) -> None:
    """Attempt errors and the display URL carry neither the userinfo nor the query."""
    receiver.down()
    url = f"http://user:pa55word@127.0.0.1:{receiver.port}/hook?token=s3cr3t-value"
    async with running(db) as (dispatcher, attempts):
        delivery = await dispatcher.enqueue("t-1", url, BUILD_COMPLETED, PAYLOAD)
        await attempts.until(lambda items: len(items) >= 1)
    stored = await dispatcher.outbox.get(delivery.id)
    assert stored.display_url == f"http://127.0.0.1:{receiver.port}/hook"
    for attempt in stored.history:
        assert "pa55word" not in (attempt.error or "")
        assert "s3cr3t" not in (attempt.error or "")


async def test_basic_auth_from_the_url_reaches_the_receiver(
    db: SqliteDatabase, receiver: CallbackReceiver
) -> None:
    """Credentials in the callback URL are sent as HTTP basic auth, not lost by address pinning."""
    url = f"http://bot:pa55word@127.0.0.1:{receiver.port}/hook"
    async with running(db) as (dispatcher, attempts):
        await dispatcher.enqueue("t-1", url, BUILD_COMPLETED, PAYLOAD)
        await attempts.final()
    assert receiver.received[0].header("Authorization") == "Basic Ym90OnBhNTV3b3Jk"


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_two_dispatchers_never_double_send(
    dialect: str, request: pytest.FixtureRequest, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    """Two dispatchers (own pools, like two processes) share the work, each delivery sent once."""
    databases: list[Database]
    if dialect == "postgres":
        pg_url = request.getfixturevalue("pg_url")
        databases = [PostgresDatabase(pg_url), PostgresDatabase(pg_url)]
    else:
        databases = [SqliteDatabase(tmp_path / "f.db"), SqliteDatabase(tmp_path / "f.db")]
    for database in databases:
        await database.open()
    await migrate(databases[0])
    try:
        producer = _outbox(databases[0])
        ids = [
            (
                await producer.enqueue(
                    f"t-{n}", receiver.url(f"/hook/{n}"), BUILD_COMPLETED, PAYLOAD
                )
            ).id
            for n in range(30)
        ]
        shared = Attempts()
        async with (
            running(databases[0], owner="a", attempts=shared),
            running(databases[1], owner="b", attempts=shared),
        ):
            await shared.final(30)
        by_delivery = receiver.by_delivery()
        assert sorted(by_delivery) == sorted(ids)
        assert all(len(requests) == 1 for requests in by_delivery.values())
        assert await producer.count(DeliveryStatus.DELIVERED) == 30
        assert len(shared.items) == 30
        assert {attempt.number for _, attempt in shared.items} == {1}
    finally:
        for database in databases:
            await database.aclose()


async def test_retry_after_is_honoured_and_answers_are_read_bounded(
    db: SqliteDatabase, receiver: CallbackReceiver
) -> None:
    """A 503 with Retry-After delays the next attempt that long; a huge body is cut short."""
    huge = b"x" * (4 * 1024 * 1024)
    receiver.script(Reply(503, huge, (("Retry-After", "30"),)))
    config = DispatcherConfig(
        retry_period_s=600, backoff_base_s=0.01, backoff_cap_s=60, request_timeout_s=5,
        lease_s=10, max_response_bytes=1024,
    )  # fmt: skip
    async with running(db, config=config) as (dispatcher, attempts):
        await dispatcher.enqueue("t-1", receiver.url(), BUILD_COMPLETED, PAYLOAD)
        await attempts.until(lambda items: len(items) >= 1)
    ((delivery, attempt),) = attempts.items
    assert delivery.status is DeliveryStatus.PENDING
    assert attempt.status_code == 503
    wait = (delivery.next_attempt_at - attempt.started_at).total_seconds()
    assert 30 <= wait < 35
    assert attempt.error is not None
    assert attempt.error.startswith("HTTP 503: xxx")
    assert len(attempt.error) < 300
