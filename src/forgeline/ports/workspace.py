"""The Workspace port: where commands run (a local directory, or a pod through kubectl).

Git and the coding agents both run through this port, so a kubernetes workspace runs both
inside the pod where the checkout lives. Two shapes of command exist:

- :meth:`Workspace.run` for short commands run to their end (git, ``mkdir``, a version
  check), with their output collected;
- :meth:`Workspace.spawn` for long-lived ones whose stdout is streamed line by line (the
  agent CLI), returning a :class:`Process` handle that can be interrupted and killed;
- :meth:`DuplexWorkspace.spawn_duplex`, where offered, for a long-lived one that is also
  written to: an agent speaking a protocol over its stdin and stdout (ACP's JSON-RPC).

Every spawned command is *tracked*: the workspace can find and end every process it started,
including those that left its process group or session (the Claude Code Bash tool runs each
command in a session of its own). See the adapters for how.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: The name of the environment variable that marks every process of one spawned command.
#: Adapters add it to the child environment; it is inherited across fork, exec and setsid,
#: which is what lets them find a command's escaped descendants. Not a secret.
RUN_MARKER_VAR = "FORGELINE_RUN_TOKEN"


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

    def stderr_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of stderr, decoded."""
        text = self.stderr.decode(errors="replace").rstrip()
        return "\n".join(text.splitlines()[-lines:])


@runtime_checkable
class Process(Protocol):
    """A running command started by :meth:`Workspace.spawn`.

    Duties:

    - :meth:`stdout_lines` frames stdout into lines (without the newline) of at most the
      ``line_limit`` given to ``spawn``; a longer line raises ``LineTooLongError`` at once
      rather than buffering without bound or blocking.
    - stderr is drained concurrently and its tail kept, so a chatty stderr never blocks the
      child and the last words of a crash can be reported.
    - :meth:`kill` ends the command **and every process it started**, also those in their
      own session or re-parented to init, also after the command itself has exited. It is
      bounded in time, idempotent, and finishes its work even when the caller is cancelled.
    """

    @property
    def pid(self) -> int | None:
        """The local process id (of ``kubectl`` for the kubernetes workspace)."""
        ...

    @property
    def returncode(self) -> int | None:
        """The exit code once the command ended (negative for a signal), else None."""
        ...

    def stdout_lines(self) -> AsyncIterator[bytes]:
        """Stdout, one line at a time, until EOF. Call once."""
        ...

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines of stderr read so far."""
        ...

    async def wait(self) -> int:
        """Wait for the command to end; its exit code (negative for a signal)."""
        ...

    async def interrupt(self) -> None:
        """Send SIGINT to the command itself so it can end cleanly and report; no-op once
        it has ended."""
        ...

    async def kill(self, grace_s: float = 1.0) -> int | None:
        """SIGTERM to the command and all its processes, ``grace_s`` to go, then SIGKILL.

        Returns the command's exit code (None if it could not be learnt, e.g. a lost
        connection to a pod).
        """
        ...


@runtime_checkable
class DuplexProcess(Process, Protocol):
    """A :class:`Process` whose stdin is a pipe forgeline writes to.

    Duties beyond :class:`Process`: :meth:`send` is bounded (a child that stops reading
    makes it raise ``WorkspaceError`` after ``timeout_s``, never wait forever) and raises
    ``WorkspaceError`` once the child has gone; :meth:`close_stdin` is idempotent.
    """

    async def send(self, data: bytes, timeout_s: float = 10.0) -> None:
        """Write ``data`` to the command's stdin and wait until the pipe took it."""
        ...

    def close_stdin(self) -> None:
        """Close the command's stdin (end of input: most programs then exit)."""
        ...


@runtime_checkable
class Workspace(Protocol):
    """Runs commands with an explicit environment in a working directory.

    The environment given is the whole environment of the child: nothing is inherited
    (the adapter adds only :data:`RUN_MARKER_VAR`). Paths are paths *in the workspace*.

    ``writable`` names every directory a command may write to. A confining workspace (the
    bubblewrap sandbox that agents run in) shows the command only those, writable, beside a
    read-only system; ``cwd`` is not writable unless it is among them. Unconfined workspaces
    (forgeline's own git, a pod that is itself the sandbox) ignore it.
    """

    @property
    def name(self) -> str:
        """``local`` or ``kubernetes`` (for logs and error messages)."""
        ...

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        line_limit: int,
        writable: Sequence[str] = (),
    ) -> Process:
        """Start ``argv`` with stdin closed; ``WorkspaceError`` if it cannot start."""
        ...

    async def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        timeout_s: float,
        stdin: bytes | None = None,
        writable: Sequence[str] = (),
    ) -> CommandResult:
        """Run a short command to its end and collect its output.

        A non-zero exit is returned, not raised (callers decide). After ``timeout_s`` the
        command and all its processes are killed and ``WorkspaceError`` is raised;
        ``WorkspaceError`` also when it cannot start.
        """
        ...

    async def ensure_dir(self, path: str) -> None:
        """Create directory ``path`` (and parents) if missing; ``WorkspaceError`` if not."""
        ...

    async def list_dir(self, path: str) -> list[str]:
        """The names of the entries of directory ``path``, sorted; empty when it does not
        exist; ``WorkspaceError`` when it cannot be read."""
        ...

    async def kill_processes_in(self, path: str) -> int:
        """SIGKILL every process whose working directory is ``path`` or below it; how many.

        For what a dead worker left running in an attempt's checkout: a sandboxed run ends
        with its worker, but a pod's processes outlive the ``kubectl exec`` that started
        them, and so do the processes of an unsandboxed local run.
        """
        ...


@runtime_checkable
class DuplexWorkspace(Workspace, Protocol):
    """A workspace that can also start commands forgeline converses with over stdio
    (all three of forgeline's: local, its bubblewrap sandbox, and kubernetes, where the
    conversation follows the start-up script on the ``kubectl exec`` stream)."""

    async def spawn_duplex(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        line_limit: int,
        writable: Sequence[str] = (),
    ) -> DuplexProcess:
        """As :meth:`Workspace.spawn`, but with stdin a pipe (see :class:`DuplexProcess`)."""
        ...
