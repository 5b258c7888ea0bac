"""API tokens: created once, stored as hashes, checked on every request, listed and revoked.

A builder token may be limited to named projects: it then sees and builds only those
(other projects' tasks are not found, other projects' names are forbidden).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from forgeline.domain.errors import (
    AuthError,
    ConflictError,
    InvalidProjectNameError,
    ValidationError,
)
from forgeline.domain.project import validate_project_name
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

    async def create(
        self, name: str, role: Role = Role.ADMIN, projects: Sequence[str] | None = None
    ) -> NewToken:
        """A new random token for ``name``, a builder limited to ``projects`` when given;
        only its hash is kept."""
        if not name.strip():
            raise ValidationError("a token needs a name")
        if projects is not None:
            if role is not Role.BUILDER:
                raise ValidationError("only builder tokens can be limited to projects")
            if not projects:
                raise ValidationError("name at least one project the token may use")
            try:
                projects = sorted({validate_project_name(p) for p in projects})
            except InvalidProjectNameError as exc:
                raise ValidationError(exc.message, field="projects") from exc
        value = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = await self._store.add_token(
            uuid.uuid4().hex, name.strip(), hash_token(value), role, projects
        )
        return NewToken(value=value, record=record)

    async def list(self) -> list[ApiToken]:
        """Every token's record (never a token itself), oldest first."""
        return await self._store.list_tokens()

    async def revoke(self, token_id: str, *, by: ApiToken) -> None:
        """Revoke a token at once: its next request is a 401. ``TokenNotFoundError``; a
        ``ConflictError`` (409) for the caller's own token, so that no one locks forgeline's
        API away with its last admin token by mistake."""
        if token_id == by.id:
            raise ConflictError(
                f"token {by.name!r} cannot revoke itself: revoke it with another admin token"
            )
        await self._store.delete_token(token_id)

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

    @staticmethod
    def require_project(record: ApiToken, project: str) -> None:
        """``AuthError(forbidden=True)`` (403) unless ``record`` may use ``project``."""
        if not record.sees(project):
            allowed = ", ".join(record.projects or ())
            raise AuthError(
                f"token {record.name!r} is limited to the projects {allowed}", forbidden=True
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
