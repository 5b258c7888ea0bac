"""One way for every SQL store to run its named queries on either dialect.

A store is written once, against :class:`SqlExecutor`: it names its queries (one ``.sql``
file per dialect, see :mod:`.queries`), passes named parameters, and reads rows as dicts.
What differs by dialect lives here and nowhere else:

- how an operation runs: on SQLite in a worker thread, a write inside ``BEGIN IMMEDIATE``
  (:class:`~forgeline.adapters.sql.database.SqliteDatabase`); on PostgreSQL on a pooled
  connection through :meth:`PostgresDatabase.run`, which retries it when the connection
  breaks (a write runs in one transaction, and may run more than once: the store's
  operations are written to be safe to repeat);
- how driver errors become the project's error tree: ``StorageError`` via
  :func:`~forgeline.adapters.sql.database.storage_error` (never a URL or a password),
  while a ``ForgelineError`` an operation raises passes through;
- how values are stored (:class:`Codec`): times as fixed-width UTC text on SQLite and
  ``timestamptz`` on PostgreSQL; JSON as text and ``jsonb``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from forgeline.adapters.sql import queries
from forgeline.adapters.sql.database import (
    Database,
    PostgresDatabase,
    SqliteDatabase,
    storage_error,
)

if TYPE_CHECKING:
    import psycopg

    from forgeline.adapters.sql.listen import Listener

T = TypeVar("T")
#: A row by column name.
Row = dict[str, Any]
#: Named parameters of a query (``:name`` on SQLite, ``%(name)s`` on PostgreSQL); a query
#: ignores the names it does not use, so one mapping serves both dialects.
Params = Mapping[str, Any]
_NO_PARAMS: Params = {}


def encode_time(moment: datetime) -> str:
    """A time as SQLite stores it: ISO 8601 UTC with microseconds and ``Z``, fixed width,
    so comparing the text compares the times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any) -> datetime:
    """A stored time as an aware datetime: ``timestamptz`` as it comes, text (any ISO 8601
    form forgeline wrote) parsed, a naive value taken as UTC."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_optional_time(value: Any) -> datetime | None:
    """:func:`parse_time`, or None for a null column."""
    return None if value is None else parse_time(value)


def parse_json(value: Any) -> Any:
    """A stored JSON value: text (SQLite) decoded, ``jsonb`` (PostgreSQL) as psycopg decoded
    it, null as None."""
    return json.loads(value) if isinstance(value, str) else value


class Session(Protocol):
    """One connection lent to an operation, running the store's named queries."""

    async def one(self, query: str, params: Params = _NO_PARAMS) -> Row | None:
        """The first row of ``query``, or None."""
        ...

    async def all(self, query: str, params: Params = _NO_PARAMS) -> list[Row]:
        """Every row of ``query``."""
        ...

    async def execute(self, query: str, params: Params = _NO_PARAMS) -> int:
        """Run ``query``; how many rows it changed."""
        ...

    async def execute_many(self, query: str, params: Iterable[Params]) -> None:
        """Run ``query`` once for each parameter mapping."""
        ...


#: An operation: what a store does with one session (one transaction for a write).
Operation = Callable[[Session], Coroutine[Any, Any, T]]


class Codec(Protocol):
    """How values are written in a dialect's columns."""

    def time(self, moment: datetime) -> Any:
        """A time as its dialect stores it."""
        ...

    def json(self, value: Mapping[str, Any] | Sequence[Any]) -> Any:
        """A JSON object or array as its dialect stores it (text, or ``jsonb``)."""
        ...


class SqlExecutor(Protocol):
    """Runs a store's operations on one database; see the module docstring."""

    @property
    def codec(self) -> Codec:
        """How values are stored in this dialect."""
        ...

    @property
    def listener(self) -> Listener | None:
        """Wake-ups from other processes; None where the dialect has none (SQLite)."""
        ...

    async def read(self, op: Operation[T]) -> T:
        """``op`` outside any transaction."""
        ...

    async def write(self, op: Operation[T]) -> T:
        """``op`` in one transaction (on PostgreSQL, repeated if the connection breaks)."""
        ...


def _json_text(value: Mapping[str, Any] | Sequence[Any]) -> str:
    if isinstance(value, Mapping):
        value = dict(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class SqliteCodec:
    """Times as :func:`encode_time` text, JSON as compact text."""

    def time(self, moment: datetime) -> str:
        """See :func:`encode_time`."""
        return encode_time(moment)

    def json(self, value: Mapping[str, Any] | Sequence[Any]) -> str:
        """Compact JSON text, keys sorted."""
        return _json_text(value)


class PostgresCodec:
    """Times as they are (``timestamptz``), JSON as ``jsonb``."""

    def time(self, moment: datetime) -> datetime:
        """The time itself: psycopg sends aware datetimes as ``timestamptz``."""
        return moment

    def json(self, value: Mapping[str, Any] | Sequence[Any]) -> Any:
        """The value wrapped for a ``jsonb`` parameter."""
        from psycopg.types.json import Jsonb

        return Jsonb(dict(value) if isinstance(value, Mapping) else list(value))


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run an operation on a :class:`_SqliteSession` to its end, in the calling thread.

    A SQLite session answers at once (its statements run synchronously in the worker
    thread that holds the connection), so the operation's coroutine finishes on its first
    step: the whole operation, every statement of it, runs in the one thread hop and the
    one ``BEGIN IMMEDIATE`` transaction that :class:`SqliteDatabase` gives it.
    """
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise RuntimeError("a SQLite operation awaited something other than its session")


class _SqliteSession:
    def __init__(self, conn: sqlite3.Connection, sql: Mapping[str, str]) -> None:
        self._conn = conn
        self._sql = sql

    async def one(self, query: str, params: Params = _NO_PARAMS) -> Row | None:
        row: sqlite3.Row | None = self._conn.execute(self._sql[query], params).fetchone()
        return None if row is None else dict(zip(row.keys(), row, strict=True))

    async def all(self, query: str, params: Params = _NO_PARAMS) -> list[Row]:
        rows: list[sqlite3.Row] = self._conn.execute(self._sql[query], params).fetchall()
        return [dict(zip(row.keys(), row, strict=True)) for row in rows]

    async def execute(self, query: str, params: Params = _NO_PARAMS) -> int:
        return self._conn.execute(self._sql[query], params).rowcount

    async def execute_many(self, query: str, params: Iterable[Params]) -> None:
        self._conn.executemany(self._sql[query], params)


class SqliteExecutor:
    """:class:`SqlExecutor` on a :class:`SqliteDatabase`."""

    def __init__(self, db: SqliteDatabase, package: str, what: str) -> None:
        self._db = db
        self._sql = queries.load(package, "sqlite")
        self._what = what
        self._codec = SqliteCodec()

    @property
    def codec(self) -> SqliteCodec:
        """Times as text, JSON as text."""
        return self._codec

    @property
    def listener(self) -> None:
        """None: SQLite cannot tell of another process's writes."""
        return None

    async def read(self, op: Operation[T]) -> T:
        """``op`` in a worker thread, outside any transaction."""
        try:
            return await self._db.read(lambda conn: _drive(op(_SqliteSession(conn, self._sql))))
        except sqlite3.Error as exc:
            raise storage_error(f"{self._what} read", exc) from exc

    async def write(self, op: Operation[T]) -> T:
        """``op`` in a worker thread inside ``BEGIN IMMEDIATE … COMMIT``."""
        try:
            return await self._db.write(lambda conn: _drive(op(_SqliteSession(conn, self._sql))))
        except sqlite3.Error as exc:
            raise storage_error(f"{self._what} write", exc) from exc


class _PostgresSession:
    def __init__(self, conn: psycopg.AsyncConnection[Any], sql: Mapping[str, str]) -> None:
        self._conn = conn
        self._sql = sql

    async def one(self, query: str, params: Params = _NO_PARAMS) -> Row | None:
        from psycopg.rows import dict_row

        async with self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(self._sql[query], params)
            return await cur.fetchone()

    async def all(self, query: str, params: Params = _NO_PARAMS) -> list[Row]:
        from psycopg.rows import dict_row

        async with self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(self._sql[query], params)
            return await cur.fetchall()

    async def execute(self, query: str, params: Params = _NO_PARAMS) -> int:
        cur = await self._conn.execute(self._sql[query], params)
        return cur.rowcount

    async def execute_many(self, query: str, params: Iterable[Params]) -> None:
        async with self._conn.cursor() as cur:
            await cur.executemany(self._sql[query], params)


class PostgresExecutor:
    """:class:`SqlExecutor` on a :class:`PostgresDatabase`: every operation goes through
    :meth:`PostgresDatabase.run`, so it rides out a database restart for the database's
    reconnect time (or within the caller's ``time_limit``)."""

    def __init__(self, db: PostgresDatabase, package: str, what: str) -> None:
        self._db = db
        self._sql = queries.load(package, "postgres")
        self._what = what
        self._codec = PostgresCodec()

    @property
    def codec(self) -> PostgresCodec:
        """Times as ``timestamptz``, JSON as ``jsonb``."""
        return self._codec

    @property
    def listener(self) -> Listener:
        """The database's one LISTEN connection."""
        return self._db.listener

    async def read(self, op: Operation[T]) -> T:
        """``op`` on a pooled connection in autocommit mode (each statement its own
        transaction), repeated if the connection breaks."""
        return await self._db.run(
            lambda conn: op(_PostgresSession(conn, self._sql)), f"{self._what} read"
        )

    async def write(self, op: Operation[T]) -> T:
        """``op`` in one transaction on a pooled connection, repeated if the connection
        breaks (the first try may have committed: ``op`` must be safe to repeat)."""

        async def in_transaction(conn: psycopg.AsyncConnection[Any]) -> T:
            async with conn.transaction():
                return await op(_PostgresSession(conn, self._sql))

        return await self._db.run(in_transaction, f"{self._what} write")


def sql_executor(db: Database, package: str, what: str) -> SqlExecutor:
    """The executor for ``db``'s dialect, running the queries of ``package`` (whose ``sql``
    files are ``<dialect>_queries.sql``); ``what`` names the store in error messages."""
    if isinstance(db, PostgresDatabase):
        return PostgresExecutor(db, package, what)
    return SqliteExecutor(db, package, what)
