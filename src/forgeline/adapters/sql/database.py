"""Database handles shared by every SQL adapter (queue, store, credentials, callbacks).

One handle per process, built by the composition root from ``FORGELINE_DATABASE_URL``:

- :class:`SqliteDatabase`: a few ``sqlite3`` connections in WAL mode, each call run in a
  worker thread. Writes open with ``BEGIN IMMEDIATE`` so two processes never both think
  they claimed the same row; the busy timeout makes them wait their turn instead of failing.
- :class:`PostgresDatabase`: a psycopg 3 async connection pool. Adapters run their
  statements through :meth:`PostgresDatabase.run`, which retries connection failures (a
  database restart breaks every pooled connection) and turns driver errors into
  ``StorageError``.

How long a PostgreSQL operation may take, retries included, depends on who waits: a
worker rides out an outage for ``reconnect_timeout_s``; an API request sets a short
:func:`time_limit` for everything it does and answers 503 when it is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from forgeline.adapters.sql.listen import Listener
from forgeline.domain.backoff import Backoff
from forgeline.domain.errors import ConfigurationError, ForgelineError, StorageError

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

T = TypeVar("T")

#: How long a readiness check may wait for the database.
PING_TIMEOUT_S = 2.0
#: How long a SQLite writer waits for another writer before giving up (busy timeout).
SQLITE_BUSY_TIMEOUT_S = 30.0
#: How long PostgreSQL operations retry connection failures by default (a restart).
RECONNECT_TIMEOUT_S = 60.0
#: How long the pool's own background reconnection keeps trying. Its delays double (1 s,
#: 2 s, 4 s …), so a long attempt could leave a database that is back unused for as long
#: as it was away; given up early, the next request that finds no connection starts a new
#: attempt at once.
POOL_RECONNECT_S = 2.0

_log = structlog.get_logger(__name__)
# Set by time_limit() for the code it wraps (tasks started there inherit it).
_time_limit: ContextVar[float | None] = ContextVar("forgeline_db_time_limit", default=None)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Within the block, each PostgreSQL operation gives up after ``seconds``, retries
    included, with ``StorageError``; what it left running is cancelled in the background.
    The API wraps every request in it, so a database outage answers 503 at once instead of
    holding the client for as long as the outage lasts."""
    token = _time_limit.set(seconds)
    try:
        yield
    finally:
        _time_limit.reset(token)


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///…`` URL."""
    if not url.startswith("sqlite:///"):
        raise ConfigurationError("not a sqlite:/// URL")
    return Path(url.removeprefix("sqlite:///"))


def is_postgres(url: str) -> bool:
    """True for ``postgresql://`` and ``postgres://`` URLs."""
    return url.startswith(("postgresql://", "postgres://"))


@contextlib.contextmanager
def sole_server(url: str) -> Iterator[None]:
    """While the block runs, no other ``serve`` or ``worker`` may use the SQLite database
    of ``url``: ``ConfigurationError`` naming PostgreSQL for the second one. Nothing for
    PostgreSQL, which is made for many processes.

    The lock is an ``flock`` on ``<database>.lock``: the kernel drops it when the process
    ends, however it ends (SIGKILL too), so a crash never leaves the data dir locked.
    Commands that only talk to the API or use the database briefly (``token create``,
    ``db migrate``) do not take it.
    """
    if is_postgres(url):
        yield
        return
    path = sqlite_path(url)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the data dir holds keys
    lock = path.with_name(path.name + ".lock")
    # Never deleted: another process may hold it open, and a new file would lock apart.
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise ConfigurationError(
                f"another forgeline process{f' (pid {holder})' if holder else ''} serves the"
                f" SQLite database {path}; SQLite takes one `serve` or `worker` at a time."
                " Stop that one, or point every process at one PostgreSQL database"
                " (FORGELINE_DATABASE_URL=postgresql://…) to run several."
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def safe_message(exc: BaseException) -> str:
    """The first line of a driver error, or its type when that line quotes a URL (psycopg
    messages may quote the connection string and its password)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if "://" not in text else type(exc).__name__


def storage_error(what: str, exc: BaseException) -> StorageError:
    """``StorageError`` for a failed ``what``: the driver's first line (never a URL or the
    data later lines may quote), and the fix when the schema is missing."""
    detail = safe_message(exc)
    if "no such table" in detail or ("relation" in detail and "does not exist" in detail):
        detail += " (the schema is not migrated: run `forgeline db migrate`)"
    return StorageError(f"{what} failed: {detail}")


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

        def give_back(done: asyncio.Future[T]) -> None:
            # Only once the thread has returned: the next user (or aclose) would otherwise
            # share the connection mid-statement, however often the caller is cancelled.
            if not done.cancelled():
                done.exception()  # retrieved here so an abandoned failure is not reported
            pool.put_nowait(conn)

        future = asyncio.ensure_future(asyncio.to_thread(call))
        future.add_done_callback(give_back)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The thread cannot be interrupted; the caller is let go only once it ends.
            with contextlib.suppress(BaseException):
                await future
            raise

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
        """Close every connection once no thread uses it any more; idempotent.

        Closing a connection while another thread runs a statement on it crashes the
        interpreter (a segfault inside sqlite3), so a connection still lent out (to a
        reader being cancelled, say) is waited for; one not back within
        ``SQLITE_BUSY_TIMEOUT_S`` is left open rather than pulled from under its user."""
        pool, conns, self._all, self._pool = self._pool, self._all, [], None
        if pool is None:
            return
        returned: list[sqlite3.Connection] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SQLITE_BUSY_TIMEOUT_S):
                while len(returned) < len(conns):
                    returned.append(await pool.get())
        if len(returned) < len(conns):
            _log.warning("sqlite.close_in_use", open=len(conns) - len(returned))
        for conn in returned:
            await asyncio.to_thread(conn.close)


class PostgresDatabase:
    """A psycopg 3 async connection pool (autocommit; use ``conn.transaction()``), and the
    process's one LISTEN connection (:attr:`listener`, started by its first user)."""

    dialect = "postgres"

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        reconnect_timeout_s: float = RECONNECT_TIMEOUT_S,
    ) -> None:
        self.url = url
        self._min_size = min_size
        self._max_size = max_size
        self._reconnect_s = reconnect_timeout_s
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]] | None = None
        # Operations given up by time_limit(), still cancelling: kept until they end.
        self._abandoned: set[asyncio.Task[Any]] = set()
        #: Wake-ups from other processes, for every adapter on this database.
        self.listener = Listener(url)

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
            reconnect_timeout=POOL_RECONNECT_S,
        )
        try:
            await pool.open(wait=True, timeout=10.0)
        except PoolTimeout as exc:
            await pool.close()
            raise StorageError(f"database unreachable: {safe_message(exc)}") from exc
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

    async def run(
        self,
        op: Callable[[psycopg.AsyncConnection[tuple[Any, ...]]], Awaitable[T]],
        what: str,
        *,
        retry_on: tuple[type[Exception], ...] = (),
    ) -> T:
        """``await op(connection)`` on a pooled connection, retrying connection failures
        (and ``retry_on``) for ``reconnect_timeout_s``, or within the :func:`time_limit`.

        ``op`` may run more than once, so a write must be safe to repeat: its first try
        may have committed before the connection broke. ``ForgelineError`` raised by
        ``op`` passes through; every driver error becomes ``StorageError``.
        """
        limit = _time_limit.get()
        if limit is None:
            return await self._retrying(op, what, self._reconnect_s, retry_on)
        budget = min(limit, self._reconnect_s)
        # A separate task: a query stuck on a dead network path ignores cancellation for
        # seconds (psycopg tries to cancel it on the server first); the caller must not wait.
        task = asyncio.ensure_future(self._retrying(op, what, budget, retry_on))
        try:
            return await asyncio.wait_for(asyncio.shield(task), budget)
        except TimeoutError as exc:
            raise StorageError(
                f"{what} failed: the database did not answer within {limit:g} s"
            ) from exc
        finally:
            if not task.done():
                task.cancel()
                self._abandoned.add(task)
                task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: nobody waits for it any more

    async def _retrying(
        self,
        op: Callable[[psycopg.AsyncConnection[tuple[Any, ...]]], Awaitable[T]],
        what: str,
        budget_s: float,
        retry_on: tuple[type[Exception], ...],
    ) -> T:
        import psycopg
        from psycopg_pool import PoolTimeout

        transient: tuple[type[Exception], ...] = (psycopg.OperationalError, PoolTimeout, *retry_on)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        backoff = Backoff(base_s=0.05, max_s=1.0)
        attempt = 1
        while True:
            conn = None
            try:
                # While the server is away the pool has no connection to give: wait for
                # one no longer than the budget left.
                wait_s = max(0.1, deadline - loop.time())
                async with self.connection(wait_s=wait_s) as conn:
                    return await op(conn)
            except ForgelineError:
                raise
            except transient as exc:
                # Connection lost, server shutting down or starting, serialization failure.
                if loop.time() + backoff.ceiling(attempt) > deadline:
                    raise storage_error(what, exc) from exc
                if conn is not None and conn.broken:
                    # The server dropped this pooled connection (a restart drops them
                    # all): the pool discards it, the next one is tried at once.
                    continue
                _log.info("database unavailable, retrying", op=what, error=safe_message(exc))
                await asyncio.sleep(backoff.delay(attempt))
                attempt += 1
            except psycopg.Error as exc:
                raise storage_error(what, exc) from exc

    async def ping(self) -> None:
        """Raise ``StorageError`` unless the database answers within ``PING_TIMEOUT_S``."""

        async def select_one(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
            await conn.execute("select 1")

        with time_limit(PING_TIMEOUT_S):
            await self.run(select_one, "database ping")

    async def aclose(self) -> None:
        """Stop listening; close the pool once abandoned operations have ended; idempotent."""
        await self.listener.aclose()
        if self._abandoned:
            await asyncio.wait(set(self._abandoned))
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
