"""The credential store on PostgreSQL (many workers, many machines).

Each operation is one transaction on a pooled connection, run through
:meth:`PostgresDatabase.run`, which repeats it when the connection breaks: writes are
upserts or compare-and-swaps, safe to repeat (a repeated ``delete`` after a lost answer
reports the credential missing; a repeated lookup records its use twice). Writers read the
current-key record ``FOR SHARE``; a rotation updates it, which waits for writers in flight
and makes every later writer seal under the new key (see :mod:`.base`).
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.rows import dict_row

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
from forgeline.adapters.sql.database import PostgresDatabase
from forgeline.domain.clock import utcnow
from forgeline.domain.errors import CredentialNotFoundError, MissingCredentialsError
from forgeline.domain.secrets import (
    Secret,
    validate_credential_mapping,
    validate_credential_name,
)
from forgeline.ports.credentials import CredentialInfo, CredentialUse

Conn = psycopg.AsyncConnection[Any]
_WHAT = "credential store"


def _info(row: dict[str, Any]) -> CredentialInfo:
    return CredentialInfo(
        name=row["name"],
        project=from_db_scope(row["project"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_used_at=row["last_used_at"],
        key_id=row["key_id"],
    )


def _stored(row: dict[str, Any]) -> StoredRow:
    return StoredRow(
        id=row["id"],
        name=row["name"],
        project=from_db_scope(row["project"]),
        sealed=SealedValue(row["key_id"], bytes(row["wrapped_key"]), bytes(row["ciphertext"])),
    )


async def _lookup(conn: Conn, name: str, project: str | None) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "select id, name, project, key_id, wrapped_key, ciphertext from credentials"
        " where name = %s and project in (%s, '') order by project desc limit 1",
        (name, db_scope(project)),
    )
    return await cur.fetchone()


async def _record_uses(conn: Conn, rows: list[StoredRow], task_id: str) -> None:
    now = utcnow()
    async with conn.cursor() as cur:
        await cur.executemany(
            "insert into credential_uses (name, project, task_id, used_at) values (%s, %s, %s, %s)",
            [(row.name, db_scope(row.project), task_id, now) for row in rows],
        )
        await cur.execute(
            "update credentials set last_used_at = %s where id = any(%s)",
            (now, [row.id for row in rows]),
        )


class PostgresCredentialStore(CredentialStoreBase):
    """:class:`~forgeline.ports.credentials.CredentialStore` on a :class:`PostgresDatabase`."""

    def __init__(self, database: PostgresDatabase, keyring: KeyRing) -> None:
        super().__init__(keyring)
        self.database = database

    async def put(self, name: str, value: Secret, *, project: str | None = None) -> CredentialInfo:
        """Create or replace a credential (see the port)."""
        validate_credential_name(name)
        project = check_scope(project)
        plaintext = check_value(value)

        async def upsert(conn: Conn) -> dict[str, Any] | None:
            async with conn.transaction():
                now = utcnow()
                cur = await conn.execute(
                    "select current_key_id from credential_keyring where id = 1 for share"
                )
                found = await cur.fetchone()
                if found is None:
                    # First credential ever: adopt this process's key. ON CONFLICT covers a
                    # concurrent first writer; re-reading under the lock yields the winner.
                    await conn.execute(
                        "insert into credential_keyring (id, current_key_id, updated_at)"
                        " values (1, %s, %s) on conflict (id) do nothing",
                        (self.keyring.current.id, now),
                    )
                    cur = await conn.execute(
                        "select current_key_id from credential_keyring where id = 1 for share"
                    )
                    found = await cur.fetchone()
                key = self.key_for_writing(str(found[0]) if found else None)
                sealed = self.seal(key, name, project, plaintext)
                dcur = conn.cursor(row_factory=dict_row)
                await dcur.execute(
                    "insert into credentials (name, project, key_id, wrapped_key, ciphertext,"
                    " created_at, updated_at) values (%s, %s, %s, %s, %s, %s, %s)"
                    " on conflict (name, project) do update set key_id = excluded.key_id,"
                    " wrapped_key = excluded.wrapped_key, ciphertext = excluded.ciphertext,"
                    " updated_at = excluded.updated_at"
                    " returning name, project, created_at, updated_at, last_used_at, key_id",
                    (
                        name,
                        db_scope(project),
                        key.id,
                        sealed.wrapped_key,
                        sealed.ciphertext,
                        now,
                        now,
                    ),
                )
                return await dcur.fetchone()

        row = await self.database.run(upsert, _WHAT)
        assert row is not None  # noqa: S101 - RETURNING always yields the row
        return _info(row)

    async def get(
        self, name: str, *, project: str | None = None, task_id: str | None = None
    ) -> Secret:
        """The value, project scope first (see the port)."""
        validate_credential_name(name)
        project = check_scope(project)

        async def read(conn: Conn) -> Secret:
            async with conn.transaction():
                found = await _lookup(conn, name, project)
                if found is None:
                    raise CredentialNotFoundError(name, project)
                row = _stored(found)
                secret = self.unseal(row)
                if task_id is not None:
                    await _record_uses(conn, [row], task_id)
                return secret

        return await self.database.run(read, _WHAT)

    async def resolve(
        self, mapping: Mapping[str, str], *, project: str | None, task_id: str | None
    ) -> dict[str, Secret]:
        """``{ENV_VAR: name}`` → ``{ENV_VAR: Secret}`` in one transaction (see the port)."""
        wanted = validate_credential_mapping(mapping)
        project = check_scope(project)

        async def read(conn: Conn) -> dict[str, Secret]:
            async with conn.transaction():
                cur = conn.cursor(row_factory=dict_row)
                # One row per name: the project's own when it has one, else the global one.
                await cur.execute(
                    "select distinct on (name) id, name, project, key_id, wrapped_key, ciphertext"
                    " from credentials"
                    " where name = any(%s) and project in (%s, '')"
                    " order by name, project desc",
                    (sorted(set(wanted.values())), db_scope(project)),
                )
                rows = {r.name: r for r in map(_stored, await cur.fetchall())}
                missing = {var: cred for var, cred in wanted.items() if cred not in rows}
                if missing:
                    raise MissingCredentialsError(project, missing)
                secrets = {credential: self.unseal(row) for credential, row in rows.items()}
                if task_id is not None and rows:
                    await _record_uses(conn, list(rows.values()), task_id)
                return secrets

        secrets = await self.database.run(read, _WHAT)
        return {var: secrets[credential] for var, credential in wanted.items()}

    async def list(self, *, project: str | None = None) -> list[CredentialInfo]:
        """Credentials without values (see the port for the scope rule)."""
        project = check_scope(project)

        async def read(conn: Conn) -> builtins.list[dict[str, Any]]:
            cur = conn.cursor(row_factory=dict_row)
            if project is None:
                await cur.execute(
                    "select name, project, created_at, updated_at, last_used_at, key_id"
                    " from credentials"
                    " order by name, project"
                )
            else:
                await cur.execute(
                    "select name, project, created_at, updated_at, last_used_at, key_id"
                    " from credentials c"
                    " where c.project = %s or (c.project = '' and not exists ("
                    " select 1 from credentials o where o.project = %s and o.name = c.name))"
                    " order by name, project",
                    (project, project),
                )
            return await cur.fetchall()

        return [_info(row) for row in await self.database.run(read, _WHAT)]

    async def delete(self, name: str, *, project: str | None = None) -> None:
        """Remove one credential of exactly this scope (see the port)."""
        validate_credential_name(name)
        project = check_scope(project)

        async def delete(conn: Conn) -> int:
            cur = await conn.execute(
                "delete from credentials where name = %s and project = %s",
                (name, db_scope(project)),
            )
            return cur.rowcount

        if not await self.database.run(delete, _WHAT):
            raise CredentialNotFoundError(name, project)

    async def uses(
        self, *, name: str | None = None, task_id: str | None = None, limit: int = 100
    ) -> builtins.list[CredentialUse]:
        """Recorded uses, newest first (see the port)."""
        limit = check_limit(limit)

        async def read(conn: Conn) -> builtins.list[dict[str, Any]]:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "select name, project, task_id, used_at from credential_uses"
                " where (%(name)s::text is null or name = %(name)s)"
                " and (%(task)s::text is null or task_id = %(task)s)"
                " order by used_at desc, id desc limit %(limit)s",
                {"name": name, "task": task_id, "limit": limit},
            )
            return await cur.fetchall()

        rows = await self.database.run(read, _WHAT)
        return [
            CredentialUse(
                name=row["name"],
                project=from_db_scope(row["project"]),
                task_id=row["task_id"],
                used_at=row["used_at"],
            )
            for row in rows
        ]

    # --- rotation primitives -----------------------------------------------------------------

    async def _set_current_key(self, key_id: str) -> None:
        async def upsert(conn: Conn) -> None:
            # Conflicts with writers' FOR SHARE: waits for those in flight, then every
            # later writer sees the new key.
            await conn.execute(
                "insert into credential_keyring (id, current_key_id, updated_at)"
                " values (1, %s, %s) on conflict (id) do update"
                " set current_key_id = excluded.current_key_id,"
                " updated_at = excluded.updated_at",
                (key_id, utcnow()),
            )

        await self.database.run(upsert, _WHAT)

    async def _rows_not_under(
        self, key_id: str, after_id: int, limit: int
    ) -> builtins.list[StoredRow]:
        async def read(conn: Conn) -> builtins.list[dict[str, Any]]:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "select id, name, project, key_id, wrapped_key, ciphertext from credentials"
                " where key_id <> %s and id > %s order by id limit %s",
                (key_id, after_id, limit),
            )
            return await cur.fetchall()

        return [_stored(row) for row in await self.database.run(read, _WHAT)]

    async def _swap_sealed(self, swaps: builtins.list[tuple[StoredRow, SealedValue]]) -> int:
        if not swaps:
            return 0

        async def swap(conn: Conn) -> int:
            # Compare-and-swap on the old ciphertext: a repeat changes nothing more.
            changed = 0
            async with conn.transaction():
                for row, new in swaps:
                    cur = await conn.execute(
                        "update credentials set key_id = %s, wrapped_key = %s, ciphertext = %s"
                        " where id = %s and key_id = %s and ciphertext = %s",
                        (
                            new.key_id,
                            new.wrapped_key,
                            new.ciphertext,
                            row.id,
                            row.sealed.key_id,
                            row.sealed.ciphertext,
                        ),
                    )
                    changed += cur.rowcount
            return changed

        return await self.database.run(swap, _WHAT)

    async def _key_ids_in_use(self) -> builtins.list[str]:
        async def read(conn: Conn) -> builtins.list[tuple[Any, ...]]:
            cur = await conn.execute("select distinct key_id from credentials order by key_id")
            return await cur.fetchall()

        return [str(row[0]) for row in await self.database.run(read, _WHAT)]

    async def _count_not_under(self, key_id: str) -> int:
        async def read(conn: Conn) -> tuple[Any, ...] | None:
            cur = await conn.execute(
                "select count(*) from credentials where key_id <> %s", (key_id,)
            )
            return await cur.fetchone()

        found = await self.database.run(read, _WHAT)
        return int(str(found[0])) if found else 0
