"""A value that must never be printed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from forgeline.domain.errors import ValidationError

_MASK: Final = "[REDACTED]"


class Secret:
    """Wraps a secret string; ``repr``/``str``/format give a mask, ``reveal()`` the value.

    Secrets travel in this type from the moment they are read until the one place that
    needs the plaintext (a child environment, an HTTP header), so an accidental log line or
    f-string cannot leak them.
    """

    __slots__ = ("_name", "_value")

    def __init__(self, value: str, name: str | None = None) -> None:
        self._value = value
        self._name = name

    @property
    def name(self) -> str | None:
        """The credential's name, if it has one (used in ``[REDACTED:<name>]``)."""
        return self._name

    def reveal(self) -> str:
        """The plaintext; call only where it is handed to its consumer."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.mask!r})"

    def __str__(self) -> str:
        return self.mask

    def __format__(self, spec: str) -> str:
        return self.mask

    @property
    def mask(self) -> str:
        """What is shown instead of the value."""
        return f"[REDACTED:{self._name}]" if self._name else _MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


#: What a credential name looks like (see :func:`validate_credential_name`).
CREDENTIAL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
#: What an environment variable name a build receives looks like.
ENV_VAR_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,254}"
_CREDENTIAL_NAME = re.compile(CREDENTIAL_NAME_PATTERN)
_ENV_VAR = re.compile(ENV_VAR_PATTERN)


def validate_credential_name(name: str) -> str:
    """Return ``name`` if it is a valid credential name, else raise ``ValidationError``.

    Letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at most 128
    characters: names appear in URLs (``/credentials/{name}``), masks and log lines.
    """
    if not isinstance(name, str) or not _CREDENTIAL_NAME.fullmatch(name):
        raise ValidationError(
            f"invalid credential name {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 128 characters"
        )
    return name


def validate_env_var(name: str) -> str:
    """Return ``name`` if it can be an environment variable name, else ``ValidationError``."""
    if not isinstance(name, str) or not _ENV_VAR.fullmatch(name):
        raise ValidationError(
            f"invalid environment variable name {name!r}: use letters, digits and '_', "
            "not starting with a digit"
        )
    return name


def validate_credential_mapping(mapping: Mapping[str, str]) -> dict[str, str]:
    """``{ENV_VAR: credential name}`` if every variable and credential name can be used,
    else ``ValidationError`` naming the first that cannot."""
    return {validate_env_var(var): validate_credential_name(name) for var, name in mapping.items()}
