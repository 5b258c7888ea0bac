"""The credential store: AES-256-GCM envelopes in SQLite or PostgreSQL.

- :mod:`.keys`: master key format, ``FORGELINE_MASTER_KEY`` / ``<data dir>/master.key``,
  the key ring.
- :mod:`.crypto`: envelope encryption, associated data binding name and scope.
- :mod:`.base`: validation, scope rules and rotation shared by both dialects.
- :mod:`.sqlite`, :mod:`.postgres`: the statements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forgeline.adapters.credentials.keys import KeyRing, MasterKey, load_keyring, parse_key
from forgeline.adapters.sql.database import Database, SqliteDatabase

if TYPE_CHECKING:
    from forgeline.adapters.credentials.postgres import PostgresCredentialStore
    from forgeline.adapters.credentials.sqlite import SqliteCredentialStore

    SqlCredentialStore = SqliteCredentialStore | PostgresCredentialStore


def open_credential_store(database: Database, keyring: KeyRing) -> SqlCredentialStore:
    """The credential store for ``database``'s dialect (the schema must be migrated)."""
    if isinstance(database, SqliteDatabase):
        from forgeline.adapters.credentials.sqlite import SqliteCredentialStore

        return SqliteCredentialStore(database, keyring)
    from forgeline.adapters.credentials.postgres import PostgresCredentialStore

    return PostgresCredentialStore(database, keyring)


__all__ = [
    "KeyRing",
    "MasterKey",
    "load_keyring",
    "open_credential_store",
    "parse_key",
]
