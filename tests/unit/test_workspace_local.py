"""The local workspace: explicit environments, line framing, and killing whole process trees."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from forgeline.adapters.workspace import local
from forgeline.adapters.workspace.local import LocalWorkspace
from forgeline.adapters.workspace.proctree import find_run_processes
from forgeline.domain.errors import LineTooLongError, WorkspaceError
from forgeline.ports.workspace import RUN_MARKER_VAR, Process, Workspace

ENV = {"PATH": "/usr/bin:/bin"}


def live(pattern: str) -> list[str]:
    """Lines of ``ps`` naming ``pattern`` whose process is not a zombie."""
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True, text=True, check=True
    ).stdout
    return [
        line
        for line in out.splitlines()
        if pattern in line and line.split(None, 2)[1][0] != "Z" and "ps -ww -eo" not in line
    ]


async def eventually_gone(pattern: str, within: float = 3.0) -> list[str]:
    """``live(pattern)`` once it is empty, or what is left after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    # Polling: the end of a process that is not our child has no event to await.
    while (left := live(pattern)) and loop.time() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return left


def test_implements_the_port() -> None:
    """LocalWorkspace satisfies the Workspace protocol."""
    assert isinstance(LocalWorkspace(), Workspace)


async def test_run_uses_exactly_the_given_environment(tmp_path: Path) -> None:
    """Nothing is inherited: the child sees the given variables plus the run marker."""
    os.environ["FORGELINE_TEST_LEAK"] = "leaked"
    try:
        result = await LocalWorkspace().run(
            ["env"], cwd=str(tmp_path), env={**ENV, "ONLY": "me"}, timeout_s=10
        )
    finally:
        del os.environ["FORGELINE_TEST_LEAK"]
    assert result.ok
    names = {line.split("=", 1)[0] for line in result.stdout.decode().splitlines()}
    assert names == {"PATH", "ONLY", RUN_MARKER_VAR}


async def test_run_collects_output_exit_code_and_stdin(tmp_path: Path) -> None:
    """stdout, stderr, a non-zero exit code and stdin data all come through."""
    result = await LocalWorkspace().run(
        ["sh", "-c", "cat; pwd; echo oops >&2; exit 3"],
        cwd=str(tmp_path),
        env=ENV,
        timeout_s=10,
        stdin=b"hello\n",
    )
    assert result.exit_code == 3
    assert not result.ok
    assert result.stdout.decode().splitlines() == ["hello", str(tmp_path)]
    assert result.stderr_tail() == "oops"


async def test_run_timeout_kills_the_whole_tree(tmp_path: Path) -> None:
    """A command over its timeout is killed with its setsid'ed descendants; WorkspaceError."""
    tag = f"{uuid.uuid4().int % 1000}.{uuid.uuid4().int % 1000:03d}1"
    with pytest.raises(WorkspaceError, match="did not finish"):
        await LocalWorkspace().run(
            ["sh", "-c", f"setsid sleep 3{tag} & sleep 3{tag}"],
            cwd=str(tmp_path),
            env=ENV,
            timeout_s=0.5,
        )
    assert await eventually_gone(f"sleep 3{tag}") == []


async def test_missing_program_and_directory_are_workspace_errors(tmp_path: Path) -> None:
    """A program or a directory that does not exist is a clear WorkspaceError."""
    ws = LocalWorkspace()
    with pytest.raises(WorkspaceError, match="program 'no-such-program' not found"):
        await ws.run(["no-such-program"], cwd=str(tmp_path), env=ENV, timeout_s=5)
    with pytest.raises(WorkspaceError, match=r"directory .* not found"):
        await ws.spawn(["true"], cwd=str(tmp_path / "missing"), env=ENV, line_limit=1024)


async def test_stdout_lines_frame_and_stderr_tail_is_kept(tmp_path: Path) -> None:
    """Lines come without newlines, the last one even without a newline; stderr is kept."""
    proc = await LocalWorkspace().spawn(
        ["sh", "-c", "printf 'a\\n\\nb\\nlast'; echo err1 >&2; echo err2 >&2; exit 4"],
        cwd=str(tmp_path),
        env=ENV,
        line_limit=1024,
    )
    assert isinstance(proc, Process)
    assert [line async for line in proc.stdout_lines()] == [b"a", b"", b"b", b"last"]
    assert await proc.wait() == 4
    assert proc.stderr_tail() == "err1\nerr2"
    assert await proc.kill() == 4


async def test_follower_wakes_on_each_write_and_on_exit_not_on_a_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the follower's safety look pushed out of reach, lines written after quiet
    spells are read while the command runs, and the stream ends when it exits: the
    kernel's word of each write (inotify) and the exit woke the follower."""
    monkeypatch.setattr(local, "_FOLLOW_SAFETY_S", 3600.0)
    proc = await LocalWorkspace().spawn(
        ["sh", "-c", "sleep 0.2; echo one; sleep 0.2; echo two; sleep 0.2; printf three"],
        cwd=str(tmp_path),
        env=ENV,
        line_limit=1024,
    )
    lines = proc.stdout_lines()
    assert await asyncio.wait_for(anext(lines), 10) == b"one"
    assert await asyncio.wait_for(anext(lines), 10) == b"two"
    assert [line async for line in lines] == [b"three"]
    assert await proc.kill() == 0


async def test_killing_a_quiet_command_ends_its_follower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower waiting on a silent command ends when the command is killed (its handle
    closed), without waiting for a timer."""
    monkeypatch.setattr(local, "_FOLLOW_SAFETY_S", 3600.0)
    proc = await LocalWorkspace().spawn(
        ["sh", "-c", "echo up; exec sleep 60"], cwd=str(tmp_path), env=ENV, line_limit=1024
    )
    lines = proc.stdout_lines()
    assert await asyncio.wait_for(anext(lines), 10) == b"up"
    rest = asyncio.ensure_future(anext(lines, b"ended"))
    await asyncio.sleep(0.1)
    await proc.kill(grace_s=0.2)
    assert await asyncio.wait_for(rest, 10) == b"ended"


async def test_a_slow_reader_loses_nothing(tmp_path: Path) -> None:
    """A command that writes much and exits at once, read slowly: every line, in order."""
    proc = await LocalWorkspace().spawn(
        ["sh", "-c", "seq 1 50000"], cwd=str(tmp_path), env=ENV, line_limit=1024
    )
    seen = []
    async for line in proc.stdout_lines():
        seen.append(int(line))
        if len(seen) % 10000 == 0:
            await asyncio.sleep(0.2)
    assert seen == list(range(1, 50001))
    assert await proc.kill() == 0


async def test_a_line_over_the_cap_raises_instead_of_blocking(tmp_path: Path) -> None:
    """A line longer than the limit raises LineTooLongError while the child still writes."""
    proc = await LocalWorkspace().spawn(
        ["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x; sleep 30"],
        cwd=str(tmp_path),
        env=ENV,
        line_limit=65536,
    )

    async def read_all() -> None:
        async for _line in proc.stdout_lines():
            pass

    with pytest.raises(LineTooLongError) as caught:
        await asyncio.wait_for(read_all(), 10)
    assert caught.value.limit == 65536
    await proc.kill(grace_s=0.2)
    assert proc.returncode is not None


async def test_kill_ends_escaped_sessions_even_after_the_command_exited(tmp_path: Path) -> None:
    """A grandchild in its own session outlives the command; kill() still finds and ends it."""
    tag = f"4{uuid.uuid4().int % 1000}.{uuid.uuid4().int % 1000:03d}7"
    proc = await LocalWorkspace().spawn(
        ["sh", "-c", f"setsid sleep {tag} >/dev/null 2>&1 & echo started"],
        cwd=str(tmp_path),
        env=ENV,
        line_limit=1024,
    )
    assert [line async for line in proc.stdout_lines()] == [b"started"]
    assert await proc.wait() == 0
    assert live(f"sleep {tag}"), "the escaped grandchild should be running"
    await proc.kill(grace_s=0.5)
    assert await eventually_gone(f"sleep {tag}") == []


async def test_kill_escalates_to_sigkill_and_is_idempotent(tmp_path: Path) -> None:
    """A process ignoring SIGTERM is SIGKILLed after the grace; concurrent kills agree."""
    proc = await LocalWorkspace().spawn(
        ["sh", "-c", "trap '' TERM INT; echo ready; while :; do sleep 0.1; done"],
        cwd=str(tmp_path),
        env=ENV,
        line_limit=1024,
    )
    lines = proc.stdout_lines()
    assert await anext(lines) == b"ready"
    await proc.interrupt()
    loop = asyncio.get_running_loop()
    start = loop.time()
    codes = list(await asyncio.gather(proc.kill(grace_s=0.3), proc.kill(grace_s=0.3)))
    assert codes == [-9, -9]
    assert loop.time() - start < 4
    assert await proc.kill() == -9
    assert proc.pid is not None
    assert not find_run_processes("no-such-token", (proc.pid,))


async def test_kill_completes_when_the_caller_is_cancelled(tmp_path: Path) -> None:
    """Cancelling the task that called kill() does not abandon the kill halfway."""
    tag = f"5{uuid.uuid4().int % 1000}.{uuid.uuid4().int % 1000:03d}3"
    proc = await LocalWorkspace().spawn(
        ["sh", "-c", f"trap '' TERM; setsid sleep {tag} & echo up; sleep {tag}"],
        cwd=str(tmp_path),
        env=ENV,
        line_limit=1024,
    )
    assert await anext(proc.stdout_lines()) == b"up"
    killer = asyncio.create_task(proc.kill(grace_s=0.3))
    await asyncio.sleep(0.05)
    killer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await killer
    assert proc.returncode is not None
    assert await eventually_gone(f"sleep {tag}", within=0.5) == []


async def test_ensure_dir(tmp_path: Path) -> None:
    """ensure_dir creates parents, tolerates existing ones and reports failures."""
    target = tmp_path / "a" / "b"
    ws = LocalWorkspace()
    await ws.ensure_dir(str(target))
    await ws.ensure_dir(str(target))
    assert target.is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkspaceError, match="cannot create"):
        await ws.ensure_dir(str(tmp_path / "file" / "sub"))


async def test_kill_processes_in_a_directory(tmp_path: Path) -> None:
    """Processes working in a directory (or below it) are killed; others are not."""
    inside = tmp_path / "attempt" / "deep"
    inside.mkdir(parents=True)
    elsewhere = tmp_path / "attempt-2"
    elsewhere.mkdir()
    sleep = f"{30 + uuid.uuid4().int % 30}.{uuid.uuid4().int % 10**6:06d}"
    stray = subprocess.Popen(["sleep", sleep], cwd=inside)  # noqa: ASYNC220
    bystander = subprocess.Popen(["sleep", sleep], cwd=elsewhere)  # noqa: ASYNC220
    try:
        assert await LocalWorkspace().kill_processes_in(str(tmp_path / "attempt")) == 1
        assert await asyncio.wait_for(asyncio.to_thread(stray.wait), 5) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        for proc in (stray, bystander):
            proc.kill()
            proc.wait()


async def test_spawn_duplex_converses(tmp_path: Path) -> None:
    """spawn_duplex: what is sent reaches the command's stdin, its answers come back."""
    from tests.support.duplex import converse

    await converse(LocalWorkspace(), str(tmp_path), {"PATH": "/usr/bin:/bin"})
