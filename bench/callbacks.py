"""Callback delivery benchmark: throughput and enqueue-to-receipt latency.

Run from the repository root::

    .venv/bin/python -m bench.callbacks [--deliveries 500] [--latency-samples 100]

For SQLite (a file in a temporary directory) and PostgreSQL (a throwaway database on
``FORGELINE_TEST_PG_URL``) it measures:

- throughput: ``--deliveries`` callbacks enqueued at once, time until the receiver has
  them all and every one is recorded ``delivered`` (deliveries per second);
- latency: one callback at a time, time from ``enqueue`` to the receiver reading it
  (p50/p99) — the in-process ``notify()`` wake-up path, no polling involved.

The receiver is the test suite's threaded HTTP server on 127.0.0.1, which bounds the
figures from above; the point is the outbox's overhead per delivery and the wake-up path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import structlog
from tests.support.callback_receiver import CallbackReceiver

from forgeline.adapters.callbacks.outbox import SqlCallbackOutbox
from forgeline.adapters.sql.database import Database, PostgresDatabase, SqliteDatabase
from forgeline.adapters.sql.migrate import migrate
from forgeline.domain.build import Artifacts
from forgeline.domain.callbacks import BUILD_COMPLETED, DeliveryStatus, build_payload
from forgeline.domain.secrets import Secret
from forgeline.ports.callbacks import CallbackOutbox
from forgeline.services.callback_policy import CallbackUrlPolicy
from forgeline.services.callbacks import CallbackDispatcher, DispatcherConfig

SECRET = "bench-callback-secret-0123456789"  # noqa: S105 - a benchmark fixture
PAYLOAD = build_payload(
    task_id="t",
    project_id="bench",
    status="completed",
    output="x" * 400,
    artifacts=Artifacts(commit_sha="0" * 40, deploy_url="https://bench.example", pipeline=1),
)


@asynccontextmanager
async def sqlite_db() -> AsyncIterator[Database]:
    """A migrated SQLite database in a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteDatabase(Path(tmp) / "bench.db")
        await db.open()
        await migrate(db)
        try:
            yield db
        finally:
            await db.aclose()


@asynccontextmanager
async def postgres_db() -> AsyncIterator[Database]:
    """A migrated throwaway PostgreSQL database, dropped afterwards."""
    server = os.environ.get("FORGELINE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"forgeline_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    db = PostgresDatabase(f"{server.rpartition('/')[0]}/{name}")
    try:
        await db.open()
        await migrate(db)
        yield db
    finally:
        await db.aclose()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def outbox_for(db: Database) -> CallbackOutbox:
    """The outbox on ``db`` (either dialect)."""
    return SqlCallbackOutbox(db)


async def throughput(db: Database, receiver: CallbackReceiver, count: int) -> float:
    """Deliveries per second for ``count`` callbacks enqueued at once."""
    outbox = outbox_for(db)
    done = asyncio.Event()
    delivered = 0

    def observe(*_args: object) -> None:
        nonlocal delivered
        delivered += 1
        if delivered >= count:
            done.set()

    dispatcher = CallbackDispatcher(
        outbox,
        CallbackUrlPolicy(["127.0.0.1"]),
        Secret(SECRET),
        config=DispatcherConfig(concurrency=16),
        observer=observe,
    )
    before = len(receiver.received)
    for n in range(count):
        await outbox.enqueue(f"tp-{n}", receiver.url(), BUILD_COMPLETED, PAYLOAD)
    started = time.perf_counter()
    async with dispatcher:
        async with asyncio.timeout(300):
            await done.wait()
    elapsed = time.perf_counter() - started
    assert len(receiver.received) - before == count
    assert await outbox.count(DeliveryStatus.DELIVERED) >= count
    return count / elapsed


async def latency(db: Database, receiver: CallbackReceiver, samples: int) -> list[float]:
    """Seconds from enqueue to the receiver holding the request, one at a time."""
    outbox = outbox_for(db)
    dispatcher = CallbackDispatcher(
        outbox,
        CallbackUrlPolicy(["127.0.0.1"]),
        Secret(SECRET),
        config=DispatcherConfig(poll_interval_s=30.0),  # prove the notify() path, not polling
    )
    figures: list[float] = []
    async with dispatcher:
        for n in range(samples):
            expected = len(receiver.received) + 1
            started = time.perf_counter()
            await dispatcher.enqueue(f"lat-{n}", receiver.url(), BUILD_COMPLETED, PAYLOAD)
            await receiver.wait_for(expected, timeout_s=30)
            figures.append(time.perf_counter() - started)
    return figures


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    """Run both measurements on both databases and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--deliveries", type=int, default=500)
    parser.add_argument("--latency-samples", type=int, default=100)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only

    print(f"{'database':<10} {'deliveries/s':>13} {'latency p50':>12} {'latency p99':>12}")
    with CallbackReceiver(SECRET) as receiver:
        for label, factory in (("sqlite", sqlite_db), ("postgres", postgres_db)):
            async with factory() as db:
                rate = await throughput(db, receiver, args.deliveries)
                lat = await latency(db, receiver, args.latency_samples)
            p50, p99 = _pct(lat, 0.5) * 1000, _pct(lat, 0.99) * 1000
            mean = statistics.fmean(lat) * 1000
            print(f"{label:<10} {rate:>13.0f} {p50:>10.1f}ms {p99:>10.1f}ms   (mean {mean:.1f}ms)")
        invalid = sum(not r.signature_valid for r in receiver.received)
        print(f"requests received: {len(receiver.received)}, invalid signatures: {invalid}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
