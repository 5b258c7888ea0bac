"""Schema migrations apply once, in order, atomically, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from forgeline.adapters.sql import migrate as migrate_mod
from forgeline.adapters.sql.database import Database, SqliteDatabase
from forgeline.adapters.sql.migrate import Migration, migrate
from forgeline.domain.errors import StorageError
from tests.contract.conftest import Target


@pytest.fixture
async def db(empty_target: Target) -> AsyncIterator[Database]:
    """A fresh database of each dialect."""
    database = empty_target.handle()
    await database.open()
    try:
        yield database
    finally:
        await database.aclose()


def _fake(monkeypatch: pytest.MonkeyPatch, migrations: list[Migration]) -> None:
    monkeypatch.setattr(migrate_mod, "load_migrations", lambda _dialect: migrations)


async def _tables(db: Database) -> set[str]:
    if isinstance(db, SqliteDatabase):
        rows = await db.read(
            lambda c: c.execute("select name from sqlite_master where type='table'").fetchall()
        )
        return {r[0] for r in rows}
    async with db.connection() as conn:
        cur = await conn.execute(
            "select table_name from information_schema.tables where table_schema = 'public'"
        )
        return {r[0] for r in await cur.fetchall()}


async def test_applies_in_order_once(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pending migrations run in version order; a second run applies nothing."""
    _fake(
        monkeypatch,
        [
            Migration(1, "a", "create table a (id integer primary key);\n"),
            Migration(
                2, "b", "create table b (id integer primary key, a_id integer references a(id));"
            ),
        ],
    )
    applied = await migrate(db)
    assert [m.version for m in applied] == [1, 2]
    assert {"a", "b", "schema_migrations"} <= await _tables(db)
    assert await migrate(db) == []


async def test_failed_migration_leaves_nothing(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken migration raises StorageError and leaves no half-applied schema."""
    _fake(
        monkeypatch,
        [Migration(1, "bad", "create table ok (id integer);\ncreate tabel broken (id integer);\n")],
    )
    with pytest.raises(StorageError, match="migration failed"):
        await migrate(db)
    assert "ok" not in await _tables(db)


async def test_concurrent_migrators_serialize(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several migrators at once apply each migration exactly once."""
    _fake(monkeypatch, [Migration(1, "a", "create table a (id integer primary key);")])
    results = await asyncio.gather(*(migrate(db) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]


async def test_ping(db: Database) -> None:
    """A reachable database answers the readiness ping."""
    await db.ping()
