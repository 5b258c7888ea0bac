"""The credential store: AES-256-GCM envelopes in SQLite or PostgreSQL.

- :mod:`.keys`: master key format, ``FORGELINE_MASTER_KEY`` / ``<data dir>/master.key``,
  the key ring.
- :mod:`.crypto`: envelope encryption, associated data binding name and scope.
- :mod:`.base`: validation, scope rules and rotation.
- :mod:`.store`: the statements (``sql/<dialect>_queries.sql``), on either dialect.
"""

from __future__ import annotations

from forgeline.adapters.credentials.keys import KeyRing, MasterKey, load_keyring, parse_key
from forgeline.adapters.credentials.store import SqlCredentialStore
from forgeline.adapters.sql.database import Database


def open_credential_store(database: Database, keyring: KeyRing) -> SqlCredentialStore:
    """The credential store on ``database`` (either dialect; the schema must be migrated)."""
    return SqlCredentialStore(database, keyring)


__all__ = [
    "KeyRing",
    "MasterKey",
    "SqlCredentialStore",
    "load_keyring",
    "open_credential_store",
    "parse_key",
]
