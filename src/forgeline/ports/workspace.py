"""The Workspace port: where commands run (a local directory, or a pod through kubectl)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a short command (git, a version check) printed and how it ended."""

    argv: tuple[str, ...]
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_code == 0


class Process(Protocol):
    """A running command started by :meth:`Workspace.spawn`.

    ``stdout_lines`` frames stdout into lines (without the newline) of at most the limit
    given to ``spawn``; a longer line raises ``AgentProtocolError`` rather than blocking.
    stderr is drained concurrently and kept (its tail), so a chatty stderr never blocks
    the child.
    """

    @property
    def pid(self) -> int | None:
        """The local process id (of ``kubectl`` for the kubernetes workspace)."""
        ...

    def stdout_lines(self) -> AsyncIterator[bytes]:
        """Stdout, one line at a time, until EOF."""
        ...

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines of stderr read so far."""
        ...

    async def wait(self) -> int:
        """Wait for the command to end; its exit code (negative for a signal)."""
        ...

    async def interrupt(self) -> None:
        """Ask politely (SIGINT) so the program can end cleanly and report."""
        ...

    async def kill(self, grace_s: float = 2.0) -> int:
        """End the command and **every process it started** (also ones in their own
        session): SIGTERM, ``grace_s``, then SIGKILL. Bounded, idempotent, survives
        cancellation of the caller; returns the exit code."""
        ...


class Workspace(Protocol):
    """Runs commands with an explicit environment in a working directory.

    The environment given is the whole environment of the child: nothing is inherited.
    Git and agents both run through this port, so a kubernetes workspace runs both inside
    the pod where the checkout lives.
    """

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        line_limit: int,
    ) -> Process:
        """Start ``argv`` with stdin closed; raise ``WorkspaceError`` if it cannot start."""
        ...

    async def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        timeout_s: float,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run a short command to its end (killing it after ``timeout_s``)."""
        ...
