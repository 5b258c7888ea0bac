"""A value that must never be printed."""

from __future__ import annotations

from typing import Final

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
