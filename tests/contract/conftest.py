"""The contract suite's databases: one fixture per dialect, parametrized over both.

A migrated database is a copy of a template migrated once per run (a file copy on SQLite,
``CREATE DATABASE … TEMPLATE`` on PostgreSQL), not a fresh database migrated for each test.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from forgeline.adapters.sql.database import Database, PostgresDatabase, SqliteDatabase
from forgeline.adapters.sql.migrate import migrate

#: Both dialects; PostgreSQL tests fail (never skip) without a server.
DIALECTS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@dataclass(frozen=True, slots=True)
class Target:
    """One test's database: its dialect and where it is (a file, or a URL)."""

    dialect: str
    location: str

    def handle(self, *, max_size: int = 10) -> Database:
        """A new, unopened handle on the database (``max_size``: PostgreSQL pool size)."""
        if self.dialect == "sqlite":
            return SqliteDatabase(Path(self.location))
        return PostgresDatabase(self.location, max_size=max_size)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once for the whole run, copied by :func:`sqlite_target`."""
    path = tmp_path_factory.mktemp("template") / "forgeline.db"

    async def migrated() -> None:
        db = SqliteDatabase(path)
        try:
            await migrate(db)
        finally:
            await db.aclose()  # the last close folds the WAL back into the file

    asyncio.run(migrated())
    return path


@pytest.fixture
def sqlite_target(sqlite_template: Path, tmp_path: Path) -> Target:
    """A migrated, empty SQLite database of this test."""
    path = tmp_path / "forgeline.db"
    shutil.copyfile(sqlite_template, path)
    return Target("sqlite", str(path))


@pytest.fixture
def pg_target(pg_migrated_url: str) -> Target:
    """A migrated, empty PostgreSQL database of this test."""
    return Target("postgres", pg_migrated_url)


@pytest.fixture(params=DIALECTS)
def target(request: pytest.FixtureRequest) -> Target:
    """A migrated, empty database of each dialect."""
    dialect = "pg" if request.param == "postgres" else request.param
    found: Target = request.getfixturevalue(f"{dialect}_target")
    return found


@pytest.fixture(params=DIALECTS)
def empty_target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """An empty database of each dialect, without forgeline's schema."""
    if request.param == "sqlite":
        return Target("sqlite", str(tmp_path / "empty.db"))
    url: str = request.getfixturevalue("pg_url")
    return Target("postgres", url)


@pytest.fixture
async def migrated_db(target: Target) -> AsyncIterator[Database]:
    """An open handle on :func:`target`, closed after the test."""
    db = target.handle()
    await db.open()
    try:
        yield db
    finally:
        await db.aclose()
