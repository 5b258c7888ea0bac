"""The PostgreSQL queue rides out lost connections without losing a notification's effect."""

from __future__ import annotations

import asyncio

import psycopg
import psycopg_pool
import pytest

from forgeline.adapters.queue.postgres import PostgresWorkQueue
from forgeline.adapters.sql.database import PostgresDatabase
from forgeline.adapters.sql.migrate import migrate
from forgeline.domain.errors import StorageError
from forgeline.domain.task import TaskStatus
from tests.support.pg_backends import terminate_backends

pytestmark = pytest.mark.postgres


async def test_operations_and_listener_survive_killed_connections(pg_url: str) -> None:
    """After every connection is killed, operations retry and wake-ups work again."""
    worker_db, api_db = PostgresDatabase(pg_url), PostgresDatabase(pg_url)
    await worker_db.open()
    await api_db.open()
    worker, api = PostgresWorkQueue(worker_db), PostgresWorkQueue(api_db)
    try:
        await migrate(api_db)
        done = await api.enqueue("build", {})
        (lease,) = await worker.claim("w", lease_s=30)
        assert not await worker.wait_for_cancel(done.task.id, 0.1)  # the listener is up
        assert await asyncio.to_thread(terminate_backends, pg_url) >= 3
        # Pool connections are dead: the next calls retry on fresh ones.
        assert (await worker.heartbeat(lease, lease_s=30)).status is TaskStatus.RUNNING
        waiting = asyncio.create_task(worker.wait_for_cancel(done.task.id, 5.0), name="wait")
        await asyncio.sleep(0.3)  # the listener reconnects meanwhile
        await api.cancel(done.task.id)
        assert await asyncio.wait_for(waiting, 5.0)
        assert (await worker.finish_cancelled(lease)).status is TaskStatus.CANCELLED
    finally:
        for queue in (worker, api):
            await queue.aclose()
        for db in (worker_db, api_db):
            await db.aclose()


async def test_unreachable_database_is_a_storage_error(pg_url: str) -> None:
    """When the database stays away past the reconnect budget, the caller gets StorageError."""
    db = PostgresDatabase(pg_url, reconnect_timeout_s=1.0)
    await db.open()
    queue = PostgresWorkQueue(db)
    try:
        await migrate(db)
        done = await queue.enqueue("build", {})
        name = pg_url.rsplit("/", 1)[1]
        base = pg_url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'drop database "{name}" with (force)')
        with pytest.raises(StorageError) as caught:
            await queue.get(done.task.id)
        assert isinstance(caught.value.__cause__, psycopg.Error | psycopg_pool.PoolTimeout)
    finally:
        await queue.aclose()
        await db.aclose()
