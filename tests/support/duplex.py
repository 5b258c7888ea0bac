"""A conversation over stdio with a command of any DuplexWorkspace (the ACP agents' need)."""

from __future__ import annotations

import asyncio

from forgeline.domain.errors import WorkspaceError
from forgeline.ports.workspace import DuplexWorkspace

#: Answers each line it reads with ``got:<line>`` until its stdin ends, then exits 0.
ECHO = ["sh", "-c", 'while IFS= read -r l; do echo "got:$l"; done']


async def converse(workspace: DuplexWorkspace, cwd: str, env: dict[str, str]) -> None:
    """Two lines out, two answers back, end of input ends the command; a send after that
    is a WorkspaceError, never a hang."""
    assert isinstance(workspace, DuplexWorkspace)
    proc = await workspace.spawn_duplex(ECHO, cwd=cwd, env=env, line_limit=1 << 20)
    try:
        lines = proc.stdout_lines()
        async with asyncio.timeout(30):
            await proc.send(b"one\n")
            assert await anext(lines) == b"got:one"
            await proc.send(b"two\n")
            assert await anext(lines) == b"got:two"
            proc.close_stdin()
            assert await proc.wait() == 0
        try:
            await proc.send(b"late\n", timeout_s=2)
        except WorkspaceError:
            pass
        else:
            raise AssertionError("a send after the end of input was accepted")
    finally:
        await proc.kill(0.5)
