"""API tokens: created once, stored as hashes, checked on every request."""

from __future__ import annotations

import hashlib
import os
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from forgeline.domain.errors import AuthError, ValidationError
from forgeline.ports.store import ApiToken, Store

#: Tokens start with this, so secret scanners and people recognize them.
TOKEN_PREFIX = "flt_"  # noqa: S105 - a prefix, not a secret
ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 - a file name


class Role(StrEnum):
    """What a token may do: ``admin`` everything; ``builder`` submit and follow builds."""

    ADMIN = "admin"
    BUILDER = "builder"


def hash_token(token: str) -> str:
    """The stored form of a token: SHA-256 (tokens are 256-bit random, so no salt needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token just created: ``value`` is shown once and never stored."""

    value: str
    record: ApiToken


class AuthService:
    """Creates and checks API tokens."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, name: str, role: Role = Role.ADMIN) -> NewToken:
        """A new random token for ``name``; only its hash is kept."""
        if not name.strip():
            raise ValidationError("a token needs a name")
        value = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = await self._store.add_token(
            uuid.uuid4().hex, name.strip(), hash_token(value), role
        )
        return NewToken(value=value, record=record)

    async def authenticate(self, authorization: str | None) -> ApiToken:
        """The token of an ``Authorization: Bearer …`` header, or ``AuthError`` (401)."""
        if not authorization:
            raise AuthError("missing Authorization: Bearer <token> header")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        return await self.verify(value)

    async def verify(self, token: str) -> ApiToken:
        """The record of the API token ``token``, or ``AuthError`` (401) when it is unknown
        or revoked: the one check behind every way a token is presented (a header, the
        dashboard's session)."""
        record = await self._store.find_token(hash_token(token.strip()))
        if record is None:
            raise AuthError("unknown or revoked API token")
        return record

    @staticmethod
    def require(record: ApiToken, role: Role) -> None:
        """``AuthError(forbidden=True)`` (403) unless ``record`` has ``role`` or admin."""
        if record.role not in (Role.ADMIN, role):
            raise AuthError(
                f"token {record.name!r} has role {record.role!r}; this needs {role.value!r}",
                forbidden=True,
            )

    async def ensure_admin_token(self, data_dir: Path) -> Path | None:
        """On a fresh installation, create an admin token into an owner-only file.

        Returns the file's path when a token was created now, else None (tokens exist).
        """
        if await self._store.count_tokens() > 0:
            return None
        new = await self.create("admin", Role.ADMIN)
        path = data_dir / ADMIN_TOKEN_FILE
        # O_EXCL + 0600 at creation: the token is never readable by others, not even briefly.
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new.value + "\n")
        tmp.replace(path)
        return path
