"""The CredentialStore port: encrypted, write-only secrets."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from forgeline.domain.clock import format_time
from forgeline.domain.secrets import Secret


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    """What may be shown about a credential: never its value.

    ``project`` is ``None`` for a global credential. ``key_id`` names the master key its
    value is encrypted under (useful to watch a rotation; not a secret).
    """

    name: str
    project: str | None
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime | None = None
    key_id: str | None = None

    @property
    def scope(self) -> str:
        """``global`` or ``project``."""
        return "project" if self.project else "global"

    def to_dict(self) -> dict[str, Any]:
        """The public JSON shape (``GET /credentials``, ``credential list --json``)."""
        return {
            "name": self.name,
            "scope": self.scope,
            "project": self.project,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
            "last_used_at": format_time(self.last_used_at) if self.last_used_at else None,
        }


@dataclass(frozen=True, slots=True)
class CredentialUse:
    """One credential handed to one task: the audit trail, kept after the credential goes.

    ``project`` is the scope the value came from (``None``: the global credential).
    """

    name: str
    project: str | None
    task_id: str
    used_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON shape for listings."""
        return {
            "name": self.name,
            "scope": "project" if self.project else "global",
            "project": self.project,
            "task_id": self.task_id,
            "used_at": format_time(self.used_at),
        }


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What ``rotate_key`` did."""

    key_id: str
    re_encrypted: int
    retired_key_ids: tuple[str, ...] = ()
    #: Still true when old keys must stay configured (``FORGELINE_MASTER_KEY``: the operator
    #: removes them; forgeline never edits the environment).
    old_keys_still_configured: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON shape of ``credential rotate-key --json``."""
        return {
            "key_id": self.key_id,
            "re_encrypted": self.re_encrypted,
            "retired_key_ids": list(self.retired_key_ids),
            "old_keys_still_configured": self.old_keys_still_configured,
            "notes": list(self.notes),
        }


class CredentialStore(Protocol):
    """Secrets encrypted at rest; values leave only as :class:`Secret`.

    Scopes: a credential is global (``project=None``) or belongs to one project; a
    project-scoped credential overrides a global one of the same name.

    Duties of every implementation:

    - Values are encrypted before they reach storage; no value, whole or in part, appears
      in storage, in a return value other than :meth:`get`/:meth:`resolve`'s ``Secret``, in
      an exception message or in a log line. Errors name credentials, never values.
    - Decrypting with a wrong master key, a tampered ciphertext or a ciphertext copied
      from another credential raises ``CredentialError``, never returns a wrong value.
    - Each operation is one transaction: cancelled or failed, it happened wholly or not
      at all (a value is never returned without its use being recorded, nor the reverse).
    - Nothing waits on anything but the database, within its own limits (SQLite's busy
      timeout, the PostgreSQL pool's connection timeout); transactions are short (one
      credential, or one batch of a rotation), so a rotation never stalls writers for long.
    - Names are validated (``ValidationError``) before anything is stored.
    """

    async def put(self, name: str, value: Secret, *, project: str | None = None) -> CredentialInfo:
        """Create or replace a credential (its ``created_at`` survives a replacement)."""
        ...

    async def get(
        self, name: str, *, project: str | None = None, task_id: str | None = None
    ) -> Secret:
        """The value (project scope first, then global), named after the credential.

        With ``task_id`` the use is recorded (use log and ``last_used_at``).
        ``CredentialNotFoundError`` if neither scope has it.
        """
        ...

    async def resolve(
        self, mapping: Mapping[str, str], *, project: str | None, task_id: str | None
    ) -> dict[str, Secret]:
        """``{ENV_VAR: credential name}`` → ``{ENV_VAR: Secret}``, in one transaction.

        Every name must exist in the project's scope or the global one, else
        ``MissingCredentialsError`` names all the missing ones (and nothing is recorded).
        With ``task_id`` each credential's use is recorded once.
        """
        ...

    async def list(self, *, project: str | None = None) -> list[CredentialInfo]:
        """Without ``project``: every credential of every scope. With ``project``: those a
        build of that project receives when it names them, i.e. the project's own and the
        global ones it does not override. Sorted by name, then scope. Never values."""
        ...

    async def delete(self, name: str, *, project: str | None = None) -> None:
        """Remove a credential of exactly this scope; ``CredentialNotFoundError`` if absent.
        Its use records stay (they are the audit trail)."""
        ...

    async def uses(
        self, *, name: str | None = None, task_id: str | None = None, limit: int = 100
    ) -> builtins.list[CredentialUse]:
        """Recorded uses, newest first, filtered by credential name and/or task."""
        ...

    async def rotate_key(self) -> RotationReport:
        """Re-encrypt every credential under a new master key, without downtime.

        Other processes keep reading and writing throughout: the old key stays readable
        until every ciphertext has moved, and writers switch to the new key as soon as the
        rotation starts. ``CredentialError`` if some credential cannot be decrypted (the
        others are rotated; the old keys are kept so nothing becomes unreadable).
        """
        ...
