"""Parsing what git prints, once, into typed values.

Git's human messages change between versions; the machine formats used here do not:
``push --porcelain`` (one ``<flag>\\t<from>:<to>\\t<summary>`` line per ref) and NUL
separated listings. Every command runs with ``LC_ALL=C``, so the few human messages
matched (``couldn't find remote ref``) are the English ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from forgeline.ports.git import PushOutcome

#: The most of git's stderr an error message carries.
EXCERPT_LINES: Final = 12
EXCERPT_CHARS: Final = 1500

_OUTCOMES: Final[dict[str, PushOutcome]] = {
    "*": "created",
    " ": "fast-forward",
    "+": "forced",
    "=": "up-to-date",
}
_PORCELAIN = re.compile(r"(?P<flag>[ +\-*!=])\t(?P<src>[^\t]*):(?P<dst>[^\t]+)\t(?P<summary>.*)")
_SUMMARY = re.compile(r"\[(?P<what>[^\]]+)\](?:\s*\((?P<why>.*)\))?")


@dataclass(frozen=True, slots=True)
class PushedRef:
    """One ref line of ``git push --porcelain``."""

    flag: str
    destination: str
    summary: str

    @property
    def rejected(self) -> bool:
        """True when the remote (or git itself, before sending) refused this ref."""
        return self.flag == "!"

    @property
    def outcome(self) -> PushOutcome | None:
        """How an accepted ref moved; ``None`` for a rejected or deleted one."""
        return _OUTCOMES.get(self.flag)

    @property
    def reason(self) -> str:
        """Git's reason for a refusal: ``non-fast-forward``, ``fetch first``,
        ``pre-receive hook declined`` …, else the whole summary."""
        match = _SUMMARY.fullmatch(self.summary.strip())
        if match is None:
            return self.summary.strip()
        return (match.group("why") or match.group("what")).strip()


def parse_push_porcelain(stdout: str) -> list[PushedRef]:
    """The ref lines of ``git push --porcelain`` (the ``To …`` and ``Done`` lines skipped)."""
    refs = []
    for line in stdout.splitlines():
        match = _PORCELAIN.fullmatch(line)
        if match:
            refs.append(
                PushedRef(
                    flag=match.group("flag"),
                    destination=match.group("dst"),
                    summary=match.group("summary"),
                )
            )
    return refs


def remote_messages(stderr: str) -> list[str]:
    """What the remote said (``remote: …`` lines, e.g. a hook's explanation), trimmed."""
    said = []
    for line in stderr.splitlines():
        if line.startswith("remote:"):
            text = line.removeprefix("remote:").strip()
            if text:
                said.append(text)
    return said


def excerpt(text: str, secrets: Iterable[str] = ()) -> str:
    """The last lines of ``text``, bounded, with every value of ``secrets`` masked.

    Masking is the second line of defence: tokens never reach git's argv or URLs, so git
    has no way to print them; if a future git or a remote echoed one anyway, it stops here.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    tail = "\n".join(lines[-EXCERPT_LINES:])
    if len(tail) > EXCERPT_CHARS:
        tail = "…" + tail[-EXCERPT_CHARS:]
    return tail


def split_nul(data: str) -> list[str]:
    """Items of a NUL-terminated listing (``-z``/``--null`` output)."""
    return [item for item in data.split("\0") if item]
