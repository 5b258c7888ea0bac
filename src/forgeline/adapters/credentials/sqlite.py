"""The credential store on SQLite (one file, many processes on one machine).

Every operation runs in one ``BEGIN IMMEDIATE`` transaction (``SqliteDatabase.write``) or
a plain read, in a worker thread; SQLite serializes writers, which is what keeps the
rotation's key switch and concurrent writers in order.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TypeVar

from forgeline.adapters.credentials.base import (
    CredentialStoreBase,
    StoredRow,
    check_limit,
    check_scope,
    check_value,
    db_scope,
    from_db_scope,
)
from forgeline.adapters.credentials.crypto import SealedValue
from forgeline.adapters.credentials.keys import KeyRing
from forgeline.adapters.sql.database import SqliteDatabase, storage_error
from forgeline.domain.clock import utcnow
from forgeline.domain.errors import CredentialNotFoundError, MissingCredentialsError
from forgeline.domain.secrets import (
    Secret,
    validate_credential_mapping,
    validate_credential_name,
)
from forgeline.ports.credentials import CredentialInfo, CredentialUse

T = TypeVar("T")


def _now() -> str:
    # ISO 8601 with microseconds and a fixed offset: sorts as text, parses back exactly.
    return utcnow().isoformat(timespec="microseconds")


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _info(row: sqlite3.Row) -> CredentialInfo:
    created = _time(row["created_at"])
    updated = _time(row["updated_at"])
    # NOT NULL columns: never None.
    assert created is not None  # noqa: S101
    assert updated is not None  # noqa: S101
    return CredentialInfo(
        name=row["name"],
        project=from_db_scope(row["project"]),
        created_at=created,
        updated_at=updated,
        last_used_at=_time(row["last_used_at"]),
        key_id=row["key_id"],
    )


def _stored(row: sqlite3.Row) -> StoredRow:
    return StoredRow(
        id=row["id"],
        name=row["name"],
        project=from_db_scope(row["project"]),
        sealed=SealedValue(row["key_id"], bytes(row["wrapped_key"]), bytes(row["ciphertext"])),
    )


def _current_key_id(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("select current_key_id from credential_keyring where id = 1").fetchone()
    return row[0] if row else None


def _lookup(conn: sqlite3.Connection, name: str, project: str | None) -> sqlite3.Row | None:
    # The project's own row sorts before the global one ('' < any project name).
    return conn.execute(  # type: ignore[no-any-return]
        "select id, name, project, key_id, wrapped_key, ciphertext from credentials"
        " where name = ? and project in (?, '') order by project desc limit 1",
        (name, db_scope(project)),
    ).fetchone()


def _record_uses(conn: sqlite3.Connection, rows: list[StoredRow], task_id: str) -> None:
    now = _now()
    conn.executemany(
        "insert into credential_uses (name, project, task_id, used_at) values (?, ?, ?, ?)",
        [(row.name, db_scope(row.project), task_id, now) for row in rows],
    )
    conn.executemany(
        "update credentials set last_used_at = ? where id = ?", [(now, row.id) for row in rows]
    )


class SqliteCredentialStore(CredentialStoreBase):
    """:class:`~forgeline.ports.credentials.CredentialStore` on a :class:`SqliteDatabase`."""

    def __init__(self, database: SqliteDatabase, keyring: KeyRing) -> None:
        super().__init__(keyring)
        self.database = database

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self.database.write(fn)
        except sqlite3.Error as exc:
            raise storage_error("credential store", exc) from exc

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self.database.read(fn)
        except sqlite3.Error as exc:
            raise storage_error("credential store", exc) from exc

    async def put(self, name: str, value: Secret, *, project: str | None = None) -> CredentialInfo:
        """Create or replace a credential (see the port)."""
        validate_credential_name(name)
        project = check_scope(project)
        plaintext = check_value(value)

        def run(conn: sqlite3.Connection) -> CredentialInfo:
            now = _now()
            current = _current_key_id(conn)
            key = self.key_for_writing(current)
            if current is None:
                conn.execute(
                    "insert into credential_keyring (id, current_key_id, updated_at)"
                    " values (1, ?, ?)",
                    (key.id, now),
                )
            sealed = self.seal(key, name, project, plaintext)
            row = conn.execute(
                "insert into credentials (name, project, key_id, wrapped_key, ciphertext,"
                " created_at, updated_at) values (?, ?, ?, ?, ?, ?, ?)"
                " on conflict (name, project) do update set key_id = excluded.key_id,"
                " wrapped_key = excluded.wrapped_key, ciphertext = excluded.ciphertext,"
                " updated_at = excluded.updated_at"
                " returning name, project, created_at, updated_at, last_used_at, key_id",
                (name, db_scope(project), key.id, sealed.wrapped_key, sealed.ciphertext, now, now),
            ).fetchone()
            return _info(row)

        return await self._write(run)

    async def get(
        self, name: str, *, project: str | None = None, task_id: str | None = None
    ) -> Secret:
        """The value, project scope first (see the port)."""
        validate_credential_name(name)
        project = check_scope(project)

        def run(conn: sqlite3.Connection) -> Secret:
            found = _lookup(conn, name, project)
            if found is None:
                raise CredentialNotFoundError(name, project)
            row = _stored(found)
            secret = self.unseal(row)
            if task_id is not None:
                _record_uses(conn, [row], task_id)
            return secret

        return await (self._write(run) if task_id is not None else self._read(run))

    async def resolve(
        self, mapping: Mapping[str, str], *, project: str | None, task_id: str | None
    ) -> dict[str, Secret]:
        """``{ENV_VAR: name}`` → ``{ENV_VAR: Secret}`` in one transaction (see the port)."""
        wanted = validate_credential_mapping(mapping)
        project = check_scope(project)

        def run(conn: sqlite3.Connection) -> dict[str, Secret]:
            rows: dict[str, StoredRow] = {}
            for credential in sorted(set(wanted.values())):
                found = _lookup(conn, credential, project)
                if found is not None:
                    rows[credential] = _stored(found)
            missing = {var: cred for var, cred in wanted.items() if cred not in rows}
            if missing:
                raise MissingCredentialsError(project, missing)
            secrets = {credential: self.unseal(row) for credential, row in rows.items()}
            if task_id is not None and rows:
                _record_uses(conn, list(rows.values()), task_id)
            return {var: secrets[credential] for var, credential in wanted.items()}

        return await self._write(run)

    async def list(self, *, project: str | None = None) -> list[CredentialInfo]:
        """Credentials without values (see the port for the scope rule)."""
        project = check_scope(project)

        def run(conn: sqlite3.Connection) -> builtins.list[CredentialInfo]:
            if project is None:
                cursor = conn.execute(
                    "select name, project, created_at, updated_at, last_used_at, key_id"
                    " from credentials"
                    " order by name, project"
                )
            else:
                cursor = conn.execute(
                    "select name, project, created_at, updated_at, last_used_at, key_id"
                    " from credentials c"
                    " where c.project = ? or (c.project = '' and not exists ("
                    " select 1 from credentials o where o.project = ? and o.name = c.name))"
                    " order by name, project",
                    (project, project),
                )
            return [_info(row) for row in cursor.fetchall()]

        return await self._read(run)

    async def delete(self, name: str, *, project: str | None = None) -> None:
        """Remove one credential of exactly this scope (see the port)."""
        validate_credential_name(name)
        project = check_scope(project)

        def run(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "delete from credentials where name = ? and project = ?", (name, db_scope(project))
            )
            return cursor.rowcount

        if not await self._write(run):
            raise CredentialNotFoundError(name, project)

    async def uses(
        self, *, name: str | None = None, task_id: str | None = None, limit: int = 100
    ) -> builtins.list[CredentialUse]:
        """Recorded uses, newest first (see the port)."""
        limit = check_limit(limit)

        def run(conn: sqlite3.Connection) -> builtins.list[CredentialUse]:
            rows = conn.execute(
                "select name, project, task_id, used_at from credential_uses"
                " where (? is null or name = ?) and (? is null or task_id = ?)"
                " order by used_at desc, id desc limit ?",
                (name, name, task_id, task_id, limit),
            ).fetchall()
            return [
                CredentialUse(
                    name=row["name"],
                    project=from_db_scope(row["project"]),
                    task_id=row["task_id"],
                    used_at=datetime.fromisoformat(row["used_at"]),
                )
                for row in rows
            ]

        return await self._read(run)

    # --- rotation primitives -----------------------------------------------------------------

    async def _set_current_key(self, key_id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "insert into credential_keyring (id, current_key_id, updated_at) values (1, ?, ?)"
                " on conflict (id) do update set current_key_id = excluded.current_key_id,"
                " updated_at = excluded.updated_at",
                (key_id, _now()),
            )

        await self._write(run)

    async def _rows_not_under(
        self, key_id: str, after_id: int, limit: int
    ) -> builtins.list[StoredRow]:
        def run(conn: sqlite3.Connection) -> builtins.list[StoredRow]:
            rows = conn.execute(
                "select id, name, project, key_id, wrapped_key, ciphertext from credentials"
                " where key_id <> ? and id > ? order by id limit ?",
                (key_id, after_id, limit),
            ).fetchall()
            return [_stored(row) for row in rows]

        return await self._read(run)

    async def _swap_sealed(self, swaps: builtins.list[tuple[StoredRow, SealedValue]]) -> int:
        if not swaps:
            return 0

        def run(conn: sqlite3.Connection) -> int:
            changed = 0
            for row, new in swaps:
                changed += conn.execute(
                    "update credentials set key_id = ?, wrapped_key = ?, ciphertext = ?"
                    " where id = ? and key_id = ? and ciphertext = ?",
                    (
                        new.key_id,
                        new.wrapped_key,
                        new.ciphertext,
                        row.id,
                        row.sealed.key_id,
                        row.sealed.ciphertext,
                    ),
                ).rowcount
            return changed

        return await self._write(run)

    async def _key_ids_in_use(self) -> builtins.list[str]:
        def run(conn: sqlite3.Connection) -> builtins.list[str]:
            rows = conn.execute("select distinct key_id from credentials order by key_id")
            return [str(row[0]) for row in rows.fetchall()]

        return await self._read(run)

    async def _count_not_under(self, key_id: str) -> int:
        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "select count(*) from credentials where key_id <> ?", (key_id,)
            ).fetchone()
            return int(row[0])

        return await self._read(run)
