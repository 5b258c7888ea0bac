"""The CredentialStore port: encrypted, write-only secrets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from forgeline.domain.secrets import Secret


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    """What may be shown about a credential: never its value."""

    name: str
    project: str | None
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime | None = None


class CredentialStore(Protocol):
    """Secrets encrypted at rest; values leave only as :class:`Secret`.

    A project-scoped credential overrides a global one of the same name. Decrypting with a
    wrong key or a tampered ciphertext raises ``CredentialError``, never returns a wrong value.
    """

    async def put(self, name: str, value: Secret, *, project: str | None = None) -> CredentialInfo:
        """Create or replace a credential."""
        ...

    async def get(
        self, name: str, *, project: str | None = None, task_id: str | None = None
    ) -> Secret:
        """The value (project scope first, then global); records the use when ``task_id`` is given.
        ``CredentialNotFoundError`` if neither scope has it."""
        ...

    async def resolve(
        self, mapping: Mapping[str, str], *, project: str | None, task_id: str | None
    ) -> dict[str, Secret]:
        """``{ENV_VAR: credential name}`` → ``{ENV_VAR: Secret}``; every name must exist."""
        ...

    async def list(self, *, project: str | None = None) -> list[CredentialInfo]:
        """Every credential (of one project, or all), without values."""
        ...

    async def delete(self, name: str, *, project: str | None = None) -> None:
        """Remove a credential; ``CredentialNotFoundError`` if absent."""
        ...
