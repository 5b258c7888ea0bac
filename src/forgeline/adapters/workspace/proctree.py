"""Finding every local process of one spawned command, escaped ones included.

Why an environment marker: the Claude Code Bash tool starts each command with ``setsid``
(its own session and process group), and after SIGTERM or SIGKILL of the CLI those commands
are re-parented to PID 1 and keep running. Process groups, sessions and the parent chain
all lose track of them. The alternatives are worse here: cgroups need privileges and a
delegated hierarchy that containers rarely give; a ``PR_SET_CHILD_SUBREAPER`` wrapper must
stay resident per run and relay signals and exit codes. The environment, by contrast, is
inherited across ``fork``, ``exec`` and ``setsid``, and ``/proc/<pid>/environ`` shows the
environment a process was started with, readable for processes of the same user. So every
spawned command gets a unique :data:`RUN_MARKER_VAR` value, and "the processes of a run"
are those whose environment carries it — plus, while their parents live, the descendants
of those (which covers a child started with a scrubbed environment, ``env -i``).

The same rule, written in POSIX sh, is used inside a pod by the kubernetes workspace.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from forgeline.ports.workspace import RUN_MARKER_VAR

_PROC = "/proc"


def _read(path: str) -> bytes | None:
    # Raw os.open/os.read: this runs for every process on the host at each sweep, and
    # the buffered file objects cost several times more for these tiny files.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _stat(pid: str) -> tuple[int, str] | None:
    """``(ppid, state)`` of ``pid``, or None when it is gone."""
    data = _read(f"{_PROC}/{pid}/stat")
    if data is None:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")": split after
    # the last ")".
    rest = data[data.rfind(b")") + 2 :].split()
    if len(rest) < 2:
        return None
    return int(rest[1]), rest[0].decode()


def _has_marker(pid: str, needle: bytes) -> bool:
    data = _read(f"{_PROC}/{pid}/environ")
    if data is None:
        return False
    if needle not in data:
        return False
    return (b"\0" + needle + b"\0") in (b"\0" + data + b"\0")


def find_run_processes(token: str, roots: Iterable[int] = ()) -> set[int]:
    """PIDs of live processes marked with ``token``, and the descendants of those and of
    ``roots``. Zombies are left out (they are already dead; their parent reaps them)."""
    needle = f"{RUN_MARKER_VAR}={token}".encode()
    me = os.getpid()
    parent_of: dict[int, int] = {}
    found: set[int] = set()
    try:
        entries = os.listdir(_PROC)  # noqa: PTH208 - plain names, fastest on /proc
    except OSError:
        return set()
    for name in entries:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == me:
            continue
        stat = _stat(name)
        if stat is None or stat[1] in ("Z", "X"):
            continue
        parent_of[pid] = stat[0]
        if _has_marker(name, needle):
            found.add(pid)
    # Descendants: walk each process's parent chain until a member is met.
    members = found | {r for r in roots if r in parent_of}
    for pid in list(parent_of):
        chain: list[int] = []
        cursor = pid
        while cursor in parent_of and cursor not in members and len(chain) < 64:
            chain.append(cursor)
            cursor = parent_of[cursor]
        if cursor in members:
            members.update(chain)
    return members


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, nearest first (breadth-first); empty if none."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir(_PROC)  # noqa: PTH208 - plain names, fastest on /proc
    except OSError:
        return []
    for name in entries:
        if name.isdigit() and (stat := _stat(name)) is not None and stat[1] not in ("Z", "X"):
            children.setdefault(stat[0], []).append(int(name))
    found: list[int] = []
    queue = [pid]
    while queue:
        for child in sorted(children.get(queue.pop(0), [])):
            found.append(child)
            queue.append(child)
    return found


def processes_in(path: str) -> list[int]:
    """PIDs of live processes whose working directory is ``path`` or below it."""
    prefix = path.rstrip("/") + "/"
    found = []
    try:
        entries = os.listdir(_PROC)  # noqa: PTH208 - plain names, fastest on /proc
    except OSError:
        return []
    for name in entries:
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"{_PROC}/{name}/cwd")  # noqa: PTH115
        except OSError:
            continue
        if cwd == path.rstrip("/") or cwd.startswith(prefix):
            found.append(int(name))
    return found


def process_name(pid: int) -> str | None:
    """The command name of ``pid`` (``/proc/<pid>/comm``), or None when it is gone."""
    data = _read(f"{_PROC}/{pid}/comm")
    return data.decode(errors="replace").strip() if data is not None else None


def signal_all(pids: Iterable[int], sig: int) -> None:
    """Send ``sig`` to each pid, ignoring those already gone or not ours."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            continue
