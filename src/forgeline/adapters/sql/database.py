"""Database URLs and reachability, shared by the SQLite and PostgreSQL adapters."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from forgeline.domain.errors import ConfigurationError, StorageError

#: How long a readiness check may wait for the database.
PING_TIMEOUT_S = 2.0


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///…`` URL."""
    if not url.startswith("sqlite:///"):
        raise ConfigurationError(f"not a sqlite URL: {url.rsplit('@', maxsplit=1)[-1]!r}")
    return Path(url.removeprefix("sqlite:///"))


def _ping_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path, timeout=PING_TIMEOUT_S)
    try:
        conn.execute("select 1").fetchone()
    finally:
        conn.close()


async def ping(url: str) -> None:
    """Raise ``StorageError`` unless the database answers within ``PING_TIMEOUT_S``."""
    try:
        if url.startswith("sqlite:///"):
            path = sqlite_path(url)
            if not path.parent.is_dir():
                raise StorageError(f"database directory {path.parent} does not exist")
            await asyncio.wait_for(asyncio.to_thread(_ping_sqlite, path), PING_TIMEOUT_S)
            return
        import psycopg

        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=int(PING_TIMEOUT_S))
        try:
            await asyncio.wait_for(conn.execute("select 1"), PING_TIMEOUT_S)
        finally:
            await conn.close()
    except (sqlite3.Error, OSError, TimeoutError) as exc:
        raise StorageError(f"database unreachable: {type(exc).__name__}") from exc
    except Exception as exc:
        import psycopg

        if isinstance(exc, psycopg.Error):
            # psycopg messages can quote the DSN; keep only the class name and first line.
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StorageError(f"database unreachable: {first}") from exc
        raise
