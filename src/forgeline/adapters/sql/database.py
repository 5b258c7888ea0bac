"""Database handles shared by every SQL adapter (queue, store, credentials, callbacks).

One handle per process, built by the composition root from ``FORGELINE_DATABASE_URL``:

- :class:`SqliteDatabase`: a few ``sqlite3`` connections in WAL mode, each call run in a
  worker thread. Writes open with ``BEGIN IMMEDIATE`` so two processes never both think
  they claimed the same row; the busy timeout makes them wait their turn instead of failing.
- :class:`PostgresDatabase`: a psycopg 3 async connection pool.

Driver exceptions are translated here into ``StorageError`` where the handle itself fails
(connect, ping); adapters translate errors of their own statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from forgeline.domain.errors import ConfigurationError, StorageError

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

T = TypeVar("T")

#: How long a readiness check may wait for the database.
PING_TIMEOUT_S = 2.0
#: How long a SQLite writer waits for another writer before giving up (busy timeout).
SQLITE_BUSY_TIMEOUT_S = 30.0


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///…`` URL."""
    if not url.startswith("sqlite:///"):
        raise ConfigurationError("not a sqlite:/// URL")
    return Path(url.removeprefix("sqlite:///"))


def is_postgres(url: str) -> bool:
    """True for ``postgresql://`` and ``postgres://`` URLs."""
    return url.startswith(("postgresql://", "postgres://"))


def _safe_message(exc: BaseException) -> str:
    # psycopg messages may quote the connection string; keep the first line, drop URLs.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if "://" not in text else type(exc).__name__


class SqliteDatabase:
    """A small pool of SQLite connections used from worker threads."""

    dialect = "sqlite"

    def __init__(self, path: Path, *, pool_size: int = 4) -> None:
        self.path = path
        self._pool_size = pool_size
        self._pool: asyncio.Queue[sqlite3.Connection] | None = None
        self._all: list[sqlite3.Connection] = []

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a read never holds a
        # transaction open and a write always starts with BEGIN IMMEDIATE.
        conn = sqlite3.connect(
            self.path,
            timeout=SQLITE_BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        return conn

    async def open(self) -> None:
        """Create the file's directory and the connections."""
        await self._opened()

    async def _opened(self) -> asyncio.Queue[sqlite3.Connection]:
        if self._pool is not None:
            return self._pool
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pool: asyncio.Queue[sqlite3.Connection] = asyncio.Queue()
        try:
            _owner_only(self.path)
            for _ in range(self._pool_size):
                conn = await asyncio.to_thread(self._connect)
                self._all.append(conn)
                pool.put_nowait(conn)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._pool = pool
        return pool

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        pool = await self._opened()
        conn = await pool.get()

        def call() -> T:
            if not write:
                return fn(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        future = asyncio.ensure_future(asyncio.to_thread(call))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The thread cannot be interrupted; let it finish before the connection goes
            # back to the pool, or the next user would share it mid-transaction.
            with contextlib.suppress(BaseException):
                await future
            raise
        finally:
            pool.put_nowait(conn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in a thread, outside any transaction."""
        return await self._run(fn, write=False)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in a thread inside ``BEGIN IMMEDIATE … COMMIT``."""
        return await self._run(fn, write=True)

    async def ping(self) -> None:
        """Raise ``StorageError`` unless the database answers."""
        try:
            await asyncio.wait_for(
                self.read(lambda c: c.execute("select 1").fetchone()), PING_TIMEOUT_S
            )
        except (sqlite3.Error, TimeoutError) as exc:
            raise StorageError(f"database unreachable: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        """Close every connection; idempotent."""
        conns, self._all, self._pool = self._all, [], None
        for conn in conns:
            await asyncio.to_thread(conn.close)


class PostgresDatabase:
    """A psycopg 3 async connection pool (autocommit; use ``conn.transaction()``)."""

    dialect = "postgres"

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self._min_size = min_size
        self._max_size = max_size
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]] | None = None

    async def open(self) -> None:
        """Open the pool and wait until it has its first connection."""
        await self._opened()

    async def _opened(self) -> AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]]:
        if self._pool is not None:
            return self._pool
        from psycopg_pool import AsyncConnectionPool, PoolTimeout

        pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]] = AsyncConnectionPool(
            self.url,
            min_size=self._min_size,
            max_size=self._max_size,
            kwargs={"autocommit": True},
            open=False,
            name="forgeline",
        )
        try:
            await pool.open(wait=True, timeout=10.0)
        except PoolTimeout as exc:
            await pool.close()
            raise StorageError(f"database unreachable: {_safe_message(exc)}") from exc
        self._pool = pool
        return pool

    @contextlib.asynccontextmanager
    async def connection(
        self, *, wait_s: float | None = None
    ) -> AsyncIterator[psycopg.AsyncConnection[tuple[Any, ...]]]:
        """Borrow a connection from the pool, waiting at most ``wait_s`` seconds for one
        (the pool's own default when None); ``PoolTimeout`` when none comes."""
        pool = await self._opened()
        async with pool.connection(timeout=wait_s) as conn:
            yield conn

    async def ping(self) -> None:
        """Raise ``StorageError`` unless the database answers."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            async with asyncio.timeout(PING_TIMEOUT_S), self.connection() as conn:
                await conn.execute("select 1")
        except (psycopg.Error, PoolTimeout, TimeoutError, OSError) as exc:
            raise StorageError(f"database unreachable: {_safe_message(exc)}") from exc

    async def aclose(self) -> None:
        """Close the pool; idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


Database = SqliteDatabase | PostgresDatabase


def open_database(url: str) -> Database:
    """The handle for ``url`` (not yet opened: call ``await db.open()``)."""
    if url.startswith("sqlite:///"):
        return SqliteDatabase(sqlite_path(url))
    if is_postgres(url):
        return PostgresDatabase(url)
    raise ConfigurationError("FORGELINE_DATABASE_URL must start with sqlite:/// or postgresql://")


def _owner_only(path: Path) -> None:
    """Make the database file (created first if need be) and its journals 0600, whatever
    the umask or their mode: SQLite gives the WAL and shared-memory files the mode of the
    database file, and tokens, credentials and transcripts live there."""
    os.close(os.open(path, os.O_CREAT | os.O_RDONLY | os.O_CLOEXEC, 0o600))
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm", f"{path.name}-journal"):
        with contextlib.suppress(FileNotFoundError):
            (path.parent / name).chmod(0o600)
