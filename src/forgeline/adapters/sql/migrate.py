"""Versioned schema migrations: named ``.sql`` files applied once, in order.

Files live in ``migrations/<dialect>/NNNN_<name>.sql`` (``NNNN`` a unique version number;
each concern owns its numbers: 0001 queue, 0002 store, 0003 credentials, 0004 callbacks,
0005 request hashes, 0006 what the API operations keep).
Each file runs in its own transaction together with its row in ``schema_migrations``, so
a failed migration leaves nothing half-applied. Concurrent migrators (several workers
starting at once) serialize: ``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources

from forgeline.adapters.sql.database import (
    Database,
    PostgresDatabase,
    SqliteDatabase,
    safe_message,
)
from forgeline.domain.errors import StorageError

_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
#: Arbitrary constant naming forgeline's migration lock among PostgreSQL advisory locks.
_PG_LOCK_KEY = 0x66_6F_72_67_65  # "forge"

_CREATE_SQLITE = """create table if not exists schema_migrations (
    version integer primary key, name text not null, applied_at text not null)"""
_CREATE_PG = """create table if not exists schema_migrations (
    version integer primary key, name text not null,
    applied_at timestamptz not null default now())"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """Every migration of ``dialect`` (``sqlite`` or ``postgres``), by version."""
    folder = resources.files("forgeline.adapters.sql.migrations") / dialect
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise StorageError(f"duplicate migration versions for {dialect}: {versions}")
    return found


async def migrate(db: Database) -> list[Migration]:
    """Apply every pending migration; returns those applied now (empty when up to date)."""
    if isinstance(db, SqliteDatabase):
        return await _migrate_sqlite(db)
    return await _migrate_postgres(db)


async def _migrate_sqlite(db: SqliteDatabase) -> list[Migration]:
    pending = load_migrations("sqlite")

    def apply(conn: sqlite3.Connection) -> list[Migration]:
        conn.execute(_CREATE_SQLITE)
        done = {row[0] for row in conn.execute("select version from schema_migrations")}
        applied: list[Migration] = []
        for migration in pending:
            if migration.version in done:
                continue
            # executescript would COMMIT our transaction first; run statement by statement.
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "insert into schema_migrations (version, name, applied_at)"
                " values (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ','now'))",
                (migration.version, migration.name),
            )
            applied.append(migration)
        return applied

    try:
        return await db.write(apply)
    except sqlite3.Error as exc:
        raise StorageError(f"migration failed: {safe_message(exc)}") from exc


async def _migrate_postgres(db: PostgresDatabase) -> list[Migration]:
    import psycopg

    pending = load_migrations("postgres")
    applied: list[Migration] = []
    try:
        async with db.connection() as conn, conn.transaction():
            await conn.execute("select pg_advisory_xact_lock(%s)", (_PG_LOCK_KEY,))
            await conn.execute(_CREATE_PG)
            cur = await conn.execute("select version from schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            for migration in pending:
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql.encode())
                    await conn.execute(
                        "insert into schema_migrations (version, name) values (%s, %s)",
                        (migration.version, migration.name),
                    )
                applied.append(migration)
    except psycopg.Error as exc:
        raise StorageError(f"migration failed: {safe_message(exc)}") from exc
    return applied


def _statements(script: str) -> list[str]:
    """Split a SQLite script into complete statements (sqlite3.complete_statement aware)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip().strip(";").strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not buffer.strip().startswith("--"):
        statements.append(buffer.strip())
    return statements
