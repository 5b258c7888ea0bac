"""The credential store on SQLite or PostgreSQL, over :mod:`forgeline.adapters.sql.executor`.

Its queries are in ``sql/<dialect>_queries.sql``; every rule about keys, scopes and
rotation lives in :mod:`.base`. Each operation is one transaction (``BEGIN IMMEDIATE`` on
SQLite, which serializes writers; on PostgreSQL writers read the current-key record
``FOR SHARE``, which a rotation's key switch waits for). On PostgreSQL the executor
repeats an operation when the connection breaks: writes are upserts or compare-and-swaps,
safe to repeat (a repeated ``delete`` after a lost answer reports the credential missing;
a repeated lookup records its use twice).
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping

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
from forgeline.adapters.sql.database import Database
from forgeline.adapters.sql.executor import (
    Row,
    Session,
    parse_optional_time,
    parse_time,
    sql_executor,
)
from forgeline.domain.clock import utcnow
from forgeline.domain.errors import CredentialNotFoundError, MissingCredentialsError
from forgeline.domain.secrets import (
    Secret,
    validate_credential_mapping,
    validate_credential_name,
)
from forgeline.ports.credentials import CredentialInfo, CredentialUse


def _info(row: Row) -> CredentialInfo:
    return CredentialInfo(
        name=row["name"],
        project=from_db_scope(row["project"]),
        created_at=parse_time(row["created_at"]),
        updated_at=parse_time(row["updated_at"]),
        last_used_at=parse_optional_time(row["last_used_at"]),
        key_id=row["key_id"],
    )


def _stored(row: Row) -> StoredRow:
    return StoredRow(
        id=row["id"],
        name=row["name"],
        project=from_db_scope(row["project"]),
        sealed=SealedValue(row["key_id"], bytes(row["wrapped_key"]), bytes(row["ciphertext"])),
    )


async def _lookup(s: Session, name: str, project: str | None) -> StoredRow | None:
    row = await s.one("lookup", {"name": name, "project": db_scope(project)})
    return None if row is None else _stored(row)


class SqlCredentialStore(CredentialStoreBase):
    """:class:`~forgeline.ports.credentials.CredentialStore` on a SQLite or PostgreSQL
    database."""

    def __init__(self, database: Database, keyring: KeyRing) -> None:
        super().__init__(keyring)
        self._sql = sql_executor(database, "forgeline.adapters.credentials.sql", "credential store")

    def _now(self) -> object:
        return self._sql.codec.time(utcnow())

    async def _record_uses(self, s: Session, rows: builtins.list[StoredRow], task_id: str) -> None:
        now = self._now()
        await s.execute_many(
            "record_use",
            [
                {"name": row.name, "project": db_scope(row.project), "task_id": task_id, "now": now}
                for row in rows
            ],
        )
        await s.execute_many("touch", [{"id": row.id, "now": now} for row in rows])

    async def put(self, name: str, value: Secret, *, project: str | None = None) -> CredentialInfo:
        """Create or replace a credential (see the port)."""
        validate_credential_name(name)
        project = check_scope(project)
        plaintext = check_value(value)

        async def upsert(s: Session) -> CredentialInfo:
            now = self._now()
            found = await s.one("current_key")
            if found is None:
                # First credential ever: adopt this process's key. The clash clause covers a
                # concurrent first writer (PostgreSQL); re-reading yields the winner.
                await s.execute("adopt_key", {"key_id": self.keyring.current.id, "now": now})
                found = await s.one("current_key")
            key = self.key_for_writing(None if found is None else str(found["current_key_id"]))
            sealed = self.seal(key, name, project, plaintext)
            row = await s.one(
                "upsert",
                {
                    "name": name,
                    "project": db_scope(project),
                    "key_id": key.id,
                    "wrapped_key": sealed.wrapped_key,
                    "ciphertext": sealed.ciphertext,
                    "now": now,
                },
            )
            assert row is not None  # noqa: S101 - RETURNING always yields the row
            return _info(row)

        return await self._sql.write(upsert)

    async def get(
        self, name: str, *, project: str | None = None, task_id: str | None = None
    ) -> Secret:
        """The value, project scope first (see the port)."""
        validate_credential_name(name)
        project = check_scope(project)

        async def read(s: Session) -> Secret:
            row = await _lookup(s, name, project)
            if row is None:
                raise CredentialNotFoundError(name, project)
            secret = self.unseal(row)
            if task_id is not None:
                await self._record_uses(s, [row], task_id)
            return secret

        # Recording the use makes it a write.
        return await (self._sql.write(read) if task_id is not None else self._sql.read(read))

    async def resolve(
        self, mapping: Mapping[str, str], *, project: str | None, task_id: str | None
    ) -> dict[str, Secret]:
        """``{ENV_VAR: name}`` → ``{ENV_VAR: Secret}`` in one transaction (see the port)."""
        wanted = validate_credential_mapping(mapping)
        project = check_scope(project)

        async def read(s: Session) -> dict[str, Secret]:
            rows: dict[str, StoredRow] = {}
            for credential in sorted(set(wanted.values())):
                found = await _lookup(s, credential, project)
                if found is not None:
                    rows[credential] = found
            missing = {var: cred for var, cred in wanted.items() if cred not in rows}
            if missing:
                raise MissingCredentialsError(project, missing)
            secrets = {credential: self.unseal(row) for credential, row in rows.items()}
            if task_id is not None and rows:
                await self._record_uses(s, builtins.list(rows.values()), task_id)
            return secrets

        secrets = await self._sql.write(read)
        return {var: secrets[credential] for var, credential in wanted.items()}

    async def list(self, *, project: str | None = None) -> builtins.list[CredentialInfo]:
        """Credentials without values (see the port for the scope rule)."""
        project = check_scope(project)
        if project is None:
            rows = await self._sql.read(lambda s: s.all("list_all"))
        else:
            params = {"project": project}
            rows = await self._sql.read(lambda s: s.all("list_for_project", params))
        return [_info(row) for row in rows]

    async def delete(self, name: str, *, project: str | None = None) -> None:
        """Remove one credential of exactly this scope (see the port)."""
        validate_credential_name(name)
        project = check_scope(project)
        params = {"name": name, "project": db_scope(project)}
        if not await self._sql.write(lambda s: s.execute("delete", params)):
            raise CredentialNotFoundError(name, project)

    async def uses(
        self, *, name: str | None = None, task_id: str | None = None, limit: int = 100
    ) -> builtins.list[CredentialUse]:
        """Recorded uses, newest first (see the port)."""
        params = {"name": name, "task_id": task_id, "limit": check_limit(limit)}
        rows = await self._sql.read(lambda s: s.all("uses", params))
        return [
            CredentialUse(
                name=row["name"],
                project=from_db_scope(row["project"]),
                task_id=row["task_id"],
                used_at=parse_time(row["used_at"]),
            )
            for row in rows
        ]

    # --- rotation primitives -----------------------------------------------------------------

    async def _set_current_key(self, key_id: str) -> None:
        params = {"key_id": key_id, "now": self._now()}
        await self._sql.write(lambda s: s.execute("set_current_key", params))

    async def _rows_not_under(
        self, key_id: str, after_id: int, limit: int
    ) -> builtins.list[StoredRow]:
        params = {"key_id": key_id, "after_id": after_id, "limit": limit}
        rows = await self._sql.read(lambda s: s.all("rows_not_under", params))
        return [_stored(row) for row in rows]

    async def _swap_sealed(self, swaps: builtins.list[tuple[StoredRow, SealedValue]]) -> int:
        if not swaps:
            return 0

        async def swap(s: Session) -> int:
            # Compare-and-swap on the old ciphertext: a repeat changes nothing more.
            changed = 0
            for row, new in swaps:
                changed += await s.execute(
                    "swap_sealed",
                    {
                        "key_id": new.key_id,
                        "wrapped_key": new.wrapped_key,
                        "ciphertext": new.ciphertext,
                        "id": row.id,
                        "old_key_id": row.sealed.key_id,
                        "old_ciphertext": row.sealed.ciphertext,
                    },
                )
            return changed

        return await self._sql.write(swap)

    async def _key_ids_in_use(self) -> builtins.list[str]:
        rows = await self._sql.read(lambda s: s.all("key_ids_in_use"))
        return [str(row["key_id"]) for row in rows]

    async def _count_not_under(self, key_id: str) -> int:
        row = await self._sql.read(lambda s: s.one("count_not_under", {"key_id": key_id}))
        return 0 if row is None else int(row["n"])
