"""How the git adapter turns failures into the error tree, with a scripted workspace:
secrets masked even if git echoed them, workspace failures and hangs translated."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import pytest

from forgeline.adapters.git import GitCli
from forgeline.adapters.git import cli as git_cli
from forgeline.domain.errors import GitError, ValidationError, WorkspaceError
from forgeline.domain.git import GitRemote
from forgeline.domain.secrets import Secret
from forgeline.logs import Redactor
from forgeline.ports.workspace import CommandResult
from tests.support.local_run import RunOnly

TOKEN = "tok-EchoedByAHypotheticalGit"
REMOTE = GitRemote("https://git.example.com/demo.git", token=Secret(TOKEN, "git-token"))
WORKDIR = "/srv/checkouts/demo"

Script = Callable[[Sequence[str]], CommandResult]


class ScriptedWorkspace(RunOnly):
    """Answers every command with ``script(argv)``; records what it was asked."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls: list[tuple[str, ...]] = []

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
        """The scripted answer."""
        self.calls.append(tuple(argv))
        return self.script(argv)


def ok(argv: Sequence[str], stdout: bytes = b"") -> CommandResult:
    """A successful command."""
    return CommandResult(tuple(argv), 0, stdout, b"")


async def test_a_token_git_prints_is_masked_in_the_error() -> None:
    """Should a git (or a remote) ever print the token, the error text still hides it."""

    def script(argv: Sequence[str]) -> CommandResult:
        if "fetch" in argv:
            stderr = f"fatal: unable to access 'https://x:{TOKEN}@git.example.com/': 403\n"
            return CommandResult(tuple(argv), 128, b"", stderr.encode())
        return ok(argv)

    git = GitCli(ScriptedWorkspace(script))
    with pytest.raises(GitError) as caught:
        await git.prepare_checkout("demo", REMOTE, "main", WORKDIR)
    assert TOKEN not in str(caught.value)
    assert "[REDACTED]" in str(caught.value)
    assert "403" in str(caught.value)


async def test_secrets_known_to_the_redactor_are_masked_too() -> None:
    """Any secret registered with forgeline's redactor is masked in git's error text."""
    redactor = Redactor()
    redactor.add("other-secret-value", "woodpecker-token")

    def script(argv: Sequence[str]) -> CommandResult:
        return CommandResult(tuple(argv), 1, b"", b"error: other-secret-value leaked\n")

    git = GitCli(ScriptedWorkspace(script), redactor=redactor)
    with pytest.raises(GitError) as caught:
        await git.has_changes(WORKDIR)
    assert "other-secret-value" not in str(caught.value)
    assert "[REDACTED:woodpecker-token]" in str(caught.value)


async def test_workspace_failure_becomes_git_error_from_it() -> None:
    """A command the workspace cannot start is a GitError caused by the WorkspaceError."""

    def script(argv: Sequence[str]) -> CommandResult:
        raise WorkspaceError("cannot start git: No such file or directory")

    git = GitCli(ScriptedWorkspace(script))
    with pytest.raises(GitError) as caught:
        await git.init_bare("/srv/git/demo.git")
    assert isinstance(caught.value.__cause__, WorkspaceError)
    assert "No such file" in str(caught.value)


async def test_a_workspace_that_overruns_the_timeout_is_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Even a workspace that ignores its timeout cannot keep a git call waiting: the
    adapter's own deadline ends it with GitError."""
    monkeypatch.setattr(git_cli, "_BACKSTOP_S", 0.05)

    class Hanging(ScriptedWorkspace):
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
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    git = GitCli(Hanging(ok), timeout_s=0.05)
    with pytest.raises(GitError, match=r"did not finish within 0\.05 s"):
        await git.has_changes(WORKDIR)


async def test_a_token_with_a_line_break_is_refused_before_running() -> None:
    """A newline in a token would inject lines into git's credential protocol."""
    workspace = ScriptedWorkspace(ok)
    git = GitCli(workspace)
    remote = GitRemote("https://git.example.com/d.git", token=Secret("abc\nprotocol=file"))
    with pytest.raises(ValidationError):
        await git.prepare_checkout("demo", remote, "main", WORKDIR)
    assert not any("fetch" in argv for argv in workspace.calls)


async def test_a_command_killed_by_a_signal_is_reported_as_such() -> None:
    """A workspace that reports a timeout as a signal exit (-9) still yields a clear
    GitError naming the signal and the limit."""

    def script(argv: Sequence[str]) -> CommandResult:
        return CommandResult(tuple(argv), -9, b"", b"")

    git = GitCli(ScriptedWorkspace(script), timeout_s=7)
    with pytest.raises(GitError, match=r"ended by signal 9 \(its time limit is 7 s\)"):
        await git.has_changes(WORKDIR)
