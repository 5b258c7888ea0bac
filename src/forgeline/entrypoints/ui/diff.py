"""A unified diff (git's patch of a commit) read into files, hunks and lines for display.

Only reads: the patch is untrusted text (an agent wrote the files), so nothing here builds
markup; the template escapes every piece. Hunk headers give the line counts, which is how a
content line such as ``+++ x`` (an added line ``++ x``) is told from a file header. Bounded:
past :data:`MAX_LINES` lines the rest is left out and the result says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Literal

#: Lines of a patch shown at most; a larger one is cut (the API serves it whole).
MAX_LINES: Final = 20_000

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_ESCAPES: Final = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "a": "\a", "b": "\b"}

LineKind = Literal["hunk", "context", "added", "removed", "note"]


@dataclass(frozen=True, slots=True)
class DiffLine:
    """One shown line: its kind, its text (without the ``+``/``-``/space marker) and its
    numbers in the old and new file."""

    kind: LineKind
    text: str
    old: int | None = None
    new: int | None = None


@dataclass(slots=True)
class DiffFile:
    """One file of a patch: its paths, what happened to it, its lines and counts."""

    old_path: str | None = None
    new_path: str | None = None
    status: Literal["added", "deleted", "modified", "renamed"] = "modified"
    binary: bool = False
    lines: list[DiffLine] = field(default_factory=list)
    additions: int = 0
    deletions: int = 0

    @property
    def path(self) -> str:
        """The file's name as shown: ``old → new`` for a rename."""
        if self.status == "renamed" and self.old_path != self.new_path:
            return f"{self.old_path} → {self.new_path}"
        return self.new_path or self.old_path or "?"


@dataclass(slots=True)
class Patch:
    """A parsed patch; ``cut`` when it had more than :data:`MAX_LINES` lines."""

    files: list[DiffFile] = field(default_factory=list)
    cut: bool = False

    @property
    def additions(self) -> int:
        """Added lines over all files."""
        return sum(f.additions for f in self.files)

    @property
    def deletions(self) -> int:
        """Removed lines over all files."""
        return sum(f.deletions for f in self.files)


def parse_patch(text: str, *, max_lines: int = MAX_LINES) -> Patch:
    """Read git's unified diff ``text`` (``git show``, ``git diff-tree --patch``)."""
    reader = _Reader()
    for count, line in enumerate(text.splitlines()):
        if count >= max_lines:
            reader.patch.cut = True
            break
        if not reader.content(line):
            reader.header(line)
    return reader.patch


class _Reader:
    """The state of reading a patch: the file at hand and what its hunk has left."""

    def __init__(self) -> None:
        self.patch = Patch()
        self.file: DiffFile | None = None
        self.old_left = self.new_left = 0
        self.old_no = self.new_no = 0

    def content(self, line: str) -> bool:
        """Take ``line`` as a line of the hunk at hand, if one is open; True if taken."""
        file = self.file
        if file is None or (self.old_left <= 0 and self.new_left <= 0):
            return False
        marker, body = line[:1], line[1:]
        if marker in (" ", ""):
            file.lines.append(DiffLine("context", body, self.old_no, self.new_no))
            self.old_no, self.old_left = self.old_no + 1, self.old_left - 1
            self.new_no, self.new_left = self.new_no + 1, self.new_left - 1
        elif marker == "-":
            file.lines.append(DiffLine("removed", body, old=self.old_no))
            file.deletions += 1
            self.old_no, self.old_left = self.old_no + 1, self.old_left - 1
        elif marker == "+":
            file.lines.append(DiffLine("added", body, new=self.new_no))
            file.additions += 1
            self.new_no, self.new_left = self.new_no + 1, self.new_left - 1
        elif marker == "\\":
            file.lines.append(DiffLine("note", body.strip()))
        else:
            self.old_left = self.new_left = 0  # a malformed hunk: read on as headers
            return False
        return True

    def header(self, line: str) -> None:
        """Take ``line`` as a file or hunk header (anything else is skipped)."""
        if line.startswith("diff --git "):
            self.file = DiffFile()
            self.file.old_path, self.file.new_path = _header_paths(line[len("diff --git ") :])
            self.patch.files.append(self.file)
            return
        file = self.file
        if file is None:
            return  # a commit message or anything else before the first file
        if line.startswith("\\"):
            file.lines.append(DiffLine("note", line[1:].strip()))
        elif match := _HUNK.match(line):
            self.old_no, self.new_no = int(match[1]), int(match[3])
            self.old_left = int(match[2]) if match[2] is not None else 1
            self.new_left = int(match[4]) if match[4] is not None else 1
            file.lines.append(DiffLine("hunk", line))
        elif line.startswith("new file mode"):
            file.status = "added"
        elif line.startswith("deleted file mode"):
            file.status = "deleted"
        elif line.startswith("rename from "):
            file.status, file.old_path = "renamed", _unquote(line[len("rename from ") :])
        elif line.startswith("rename to "):
            file.status, file.new_path = "renamed", _unquote(line[len("rename to ") :])
        elif line.startswith("--- "):
            file.old_path = _side(line[4:], "a/")
        elif line.startswith("+++ "):
            file.new_path = _side(line[4:], "b/")
        elif line.startswith(("Binary files ", "GIT binary patch")):
            file.binary = True


def _side(text: str, prefix: str) -> str | None:
    """The path of a ``---``/``+++`` line (None for ``/dev/null``)."""
    path = _unquote(text.rstrip("\t"))
    if path == "/dev/null":
        return None
    return path.removeprefix(prefix)


def _header_paths(text: str) -> tuple[str | None, str | None]:
    """The paths of a ``diff --git a/X b/Y`` line. Quoted names are read exactly; unquoted
    ones are ambiguous when they hold `` b/``, so the split that gives two equal names
    wins (a rename names its paths again in ``rename from``/``to``)."""
    if text.startswith('"'):
        old, rest = _read_quoted(text)
        new = _unquote(rest.strip())
        return old.removeprefix("a/"), new.removeprefix("b/")
    half = (len(text) - 1) // 2
    if text[half : half + 3] == " b/" and text[2:half] == text[half + 3 :]:
        return text[2:half], text[half + 3 :]
    old, _, new = text.partition(" b/")
    return old.removeprefix("a/"), new or None


def _unquote(text: str) -> str:
    """A path as git prints it: C-quoted (``"t\\303\\251st"``) when it holds unusual bytes."""
    if not text.startswith('"'):
        return text
    return _read_quoted(text)[0]


def _read_quoted(text: str) -> tuple[str, str]:
    """The C-quoted string at the start of ``text`` (decoded as UTF-8) and what follows."""
    out = bytearray()
    i = 1
    while i < len(text) and text[i] != '"':
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in "01234567" and re.fullmatch(r"[0-7]{3}", text[i + 1 : i + 4]):
                out.append(int(text[i + 1 : i + 4], 8))
                i += 4
                continue
            out.extend(_ESCAPES.get(nxt, nxt).encode())
            i += 2
            continue
        out.extend(char.encode())
        i += 1
    return out.decode("utf-8", errors="replace"), text[i + 1 :]
