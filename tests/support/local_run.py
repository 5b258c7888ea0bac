"""A minimal local ``Workspace.run`` for the git tests.

The real local and kubernetes workspaces live on another branch; this stand-in does just
what ``Workspace.run`` promises (explicit environment, nothing inherited, a timeout that
kills the command) so the git adapter can be tested with real git now.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence

from forgeline.domain.errors import WorkspaceError
from forgeline.ports.workspace import CommandResult, Process


class RunOnly:
    """The parts of a ``Workspace`` git never uses: they say so when called."""

    @property
    def name(self) -> str:
        """``local``: commands run on this machine."""
        return "local"

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        line_limit: int,
        writable: Sequence[str] = (),
    ) -> Process:
        """Not needed by git, which only runs short commands."""
        raise NotImplementedError("the git tests only use Workspace.run")

    async def ensure_dir(self, path: str) -> None:
        """Not needed by git."""
        raise NotImplementedError("the git tests only use Workspace.run")

    async def list_dir(self, path: str) -> list[str]:
        """Not needed by git."""
        raise NotImplementedError("the git tests only use Workspace.run")

    async def kill_processes_in(self, path: str) -> int:
        """Not needed by git."""
        raise NotImplementedError("the git tests only use Workspace.run")


class LocalRun(RunOnly):
    """Runs commands as local child processes; records every argv and env it ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], dict[str, str]]] = []

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
        """Run ``argv`` to its end in its own process group; kill the group on timeout."""
        self.calls.append((tuple(argv), dict(env)))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=dict(env),
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # so a timeout kills git's helpers as well
            )
        except OSError as exc:
            raise WorkspaceError(f"cannot start {argv[0]}: {exc.strerror}") from exc
        try:
            async with asyncio.timeout(timeout_s):
                stdout, stderr = await proc.communicate(stdin)
        except BaseException as exc:
            # Timeout or cancellation: nothing may outlive the call.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            if isinstance(exc, TimeoutError):
                raise WorkspaceError(f"{argv[0]} timed out after {timeout_s:g} s") from exc
            raise
        return CommandResult(
            argv=tuple(argv),
            exit_code=proc.returncode if proc.returncode is not None else -1,
            stdout=stdout,
            stderr=stderr,
        )
