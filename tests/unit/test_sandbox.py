"""The bubblewrap workspace with real ``bwrap``: what a command can see, write and signal."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from forgeline.adapters.workspace.sandbox import (
    BubblewrapWorkspace,
    SandboxConfig,
    install_root,
)
from forgeline.domain.errors import ConfigurationError, WorkspaceError
from forgeline.ports.workspace import Workspace
from tests.support.serve_process import live_processes, wait_until_gone

ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture
def sandbox() -> BubblewrapWorkspace:
    """The sandbox as builds get it."""
    return BubblewrapWorkspace()


@pytest.fixture
def private(tmp_path: Path) -> Path:
    """A data-directory-like place: owner-only, with a secret and a checkout inside."""
    data = tmp_path / "data"
    (data / "checkouts" / "p" / "attempt" / ".git").mkdir(parents=True)
    data.chmod(0o700)
    (data / "master.key").write_text("the-master-key\n")
    return data


def test_implements_the_port(sandbox: BubblewrapWorkspace) -> None:
    """BubblewrapWorkspace satisfies the Workspace protocol."""
    assert isinstance(sandbox, Workspace)


async def test_only_the_writable_directory_can_be_written(
    sandbox: BubblewrapWorkspace, private: Path
) -> None:
    """The writable checkout is written, its .git is read-only, the data directory's other
    contents do not exist, the system is read-only, /tmp is private, the uid is not root."""
    checkout = private / "checkouts" / "p" / "attempt"
    marker = f"forgeline-sandbox-{uuid.uuid4().hex}"
    script = "; ".join(
        [
            "echo made > made.txt",
            "touch .git/x 2>/dev/null && echo git-writable || echo git-read-only",
            f"cat {private}/master.key 2>/dev/null || echo key-absent",
            "touch /usr/x 2>/dev/null && echo usr-writable || echo usr-read-only",
            f"touch /tmp/{marker} && echo tmp-writable",
            "id -u",
        ]
    )
    result = await sandbox.run(
        ["sh", "-c", script], cwd=str(checkout), env=ENV, timeout_s=30, writable=[str(checkout)]
    )
    assert result.ok, result.stderr
    lines = result.stdout.decode().split()
    assert lines[:5] == ["git-read-only", "key-absent", "usr-read-only", "tmp-writable", "1000"]
    assert (checkout / "made.txt").read_text() == "made\n"
    assert not (checkout / ".git" / "x").exists()
    assert not await asyncio.to_thread(Path(f"/tmp/{marker}").exists)


async def test_a_cwd_outside_the_sandbox_is_refused(
    sandbox: BubblewrapWorkspace, private: Path
) -> None:
    """Running in a directory that is not shown would have to expose it: refused."""
    with pytest.raises(WorkspaceError, match="not visible in the sandbox"):
        await sandbox.run(["true"], cwd=str(private), env=ENV, timeout_s=10)


async def test_a_missing_program_is_named(sandbox: BubblewrapWorkspace, tmp_path: Path) -> None:
    """A program that does not exist: the same message as the local workspace."""
    with pytest.raises(WorkspaceError, match=r"program .* not found"):
        await sandbox.run([str(tmp_path / "nope")], cwd="/", env=ENV, timeout_s=10)


def test_the_cli_install_is_the_outermost_node_modules(tmp_path: Path) -> None:
    """An npm launcher's native binary sits in a sibling package: the whole tree is shown;
    any other program is shown alone (not its directory's neighbours)."""
    binary = tmp_path / "tools" / "node_modules" / "pkg" / "bin" / "cli.exe"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    link = tmp_path / "tools" / "node_modules" / ".bin" / "cli"
    link.parent.mkdir()
    link.symlink_to(binary)
    tree = str(tmp_path / "tools" / "node_modules")
    assert install_root(str(link), None) == (tree, str(link))
    sh = str(Path("/usr/bin/sh").resolve())
    assert install_root("sh", ENV["PATH"]) == (sh, sh)
    assert install_root("no-such-program-here", ENV["PATH"]) is None


async def test_interrupt_reaches_the_command_and_kill_ends_everything(
    sandbox: BubblewrapWorkspace, tmp_path: Path
) -> None:
    """SIGINT goes to the command itself (not bwrap, which would just die); kill ends the
    command and what it started in a session of its own."""
    work = tmp_path / "work"
    work.mkdir()
    sleep = f"{30 + uuid.uuid4().int % 30}.{uuid.uuid4().int % 10**6:06d}"
    script = f"trap 'echo interrupted; exit 3' INT; setsid sleep {sleep} & echo ready; wait"
    proc = await sandbox.spawn(
        ["sh", "-c", script], cwd=str(work), env=ENV, line_limit=1024, writable=[str(work)]
    )
    lines = proc.stdout_lines()
    assert await anext(lines) == b"ready"
    assert live_processes(f"sleep {sleep}")
    await proc.interrupt()
    assert await anext(lines) == b"interrupted"
    assert await asyncio.wait_for(proc.wait(), 10) == 3
    await proc.kill()
    assert wait_until_gone(f"sleep {sleep}", within_s=3.0) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop is what happens as root")
async def test_as_root_the_command_is_an_unprivileged_user_and_hands_back(
    private: Path,
) -> None:
    """As root, the command's files belong to the sandbox uid while it runs; afterwards the
    directory and what the command made are handed back to their owner."""
    sandbox = BubblewrapWorkspace(SandboxConfig(uid=65534, gid=65534))
    checkout = private / "checkouts" / "p" / "attempt"
    os.chown(checkout, 1234, 1234)
    result = await sandbox.run(
        ["sh", "-c", "stat -c %u /proc/self; echo x > new.txt"],
        cwd=str(checkout),
        env=ENV,
        timeout_s=30,
        writable=[str(checkout)],
    )
    assert result.ok, result.stderr
    assert (checkout / "new.txt").stat().st_uid == 1234
    assert checkout.stat().st_uid == 1234


async def test_check_names_the_fix(tmp_path: Path) -> None:
    """A machine without bubblewrap: the start-up check says what to install, and how to
    run without a sandbox on purpose."""
    await BubblewrapWorkspace().check()
    broken = BubblewrapWorkspace(SandboxConfig(bwrap=str(tmp_path / "no-bwrap")))
    with pytest.raises(ConfigurationError, match="bubblewrap") as raised:
        await broken.check()
    assert "FORGELINE_SANDBOX=none" in raised.value.message


async def test_the_single_stage_sandbox_of_an_unprivileged_forgeline(
    private: Path,
) -> None:
    """Run by a non-root forgeline, one bwrap does it all (its user namespace maps uid 1000
    to forgeline's own); the same view: the checkout writable, its .git and the system not,
    the data directory's secrets absent."""
    sandbox = BubblewrapWorkspace()
    sandbox._as_root = False  # the command line a non-root process builds
    checkout = private / "checkouts" / "p" / "attempt"
    script = (
        f"id -u; echo ok > made.txt; cat {private}/master.key 2>/dev/null || echo key-absent; "
        "touch .git/x 2>/dev/null || echo git-read-only"
    )
    result = await sandbox.run(
        ["sh", "-c", script], cwd=str(checkout), env=ENV, timeout_s=30, writable=[str(checkout)]
    )
    assert result.ok, result.stderr
    assert result.stdout.decode().split() == ["1000", "key-absent", "git-read-only"]
    assert (checkout / "made.txt").read_text() == "ok\n"


async def test_spawn_duplex_converses_in_the_sandbox() -> None:
    """The sandbox passes the command's stdin through bwrap."""
    from forgeline.adapters.workspace.sandbox import BubblewrapWorkspace
    from tests.support.duplex import converse

    await converse(BubblewrapWorkspace(), "/", {"PATH": "/usr/bin:/bin"})
