"""The CLI as a bot or a person uses it against a running forgeline: tokens, projects,
builds followed live, tasks shown and cancelled."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.anthropic_server import AnthropicServer
from tests.support.forgeline_server import Running, running_forgeline, server_settings

pytestmark = pytest.mark.claude


@pytest.fixture
async def forgeline(
    tmp_path: Path, claude_bin: Path, model: AnthropicServer
) -> AsyncIterator[Running]:
    """A running forgeline on embedded SQLite."""
    async with running_forgeline(server_settings(tmp_path / "data", claude_bin)) as running:
        yield running


async def cli(
    forgeline: Running, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``forgeline`` in a child process pointed at the running server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")}
    env.update(
        FORGELINE_URL=forgeline.url,
        FORGELINE_TOKEN=token or forgeline.token,
        FORGELINE_DATA_DIR=str(forgeline.settings.data_dir),
    )
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "forgeline", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def test_admin_token_file_is_owner_only(forgeline: Running) -> None:
    """The first start writes the admin token into a 0600 file."""
    path = forgeline.settings.data_dir / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_token_create_prints_a_working_token_once(forgeline: Running) -> None:
    """token create prints the token alone on stdout; it authenticates; builder role is
    refused where it must be."""
    made = await cli(forgeline, "token", "create", "ci-bot", "--role", "builder")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("flt_")
    assert made.stdout == token + "\n"
    listed = await cli(forgeline, "project", "list", "--json", token=token)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    refused = await cli(forgeline, "project", "create", "x", token=token)
    assert refused.returncode == 1
    assert "403" in refused.stderr


async def test_project_create_build_wait_and_task_show(forgeline: Running) -> None:
    """project create, build --wait --json (events live, exit 0), task show/events."""
    created = await cli(forgeline, "project", "create", "site", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["state"] == "ready"

    built = await cli(
        forgeline, "build", "site", "--prompt", "create hello.txt", "--wait", "--json"
    )
    assert built.returncode == 0, built.stderr
    events = [json.loads(line) for line in built.stdout.splitlines()]
    assert events[-1]["type"] == "result"
    assert events[-1]["data"]["status"] == "succeeded"
    task_id = events[-1]["task_id"]

    shown = await cli(forgeline, "task", "show", task_id, "--json")
    assert json.loads(shown.stdout)["status"] == "completed"
    listed = await cli(forgeline, "task", "events", task_id, "--no-follow", "--json")
    assert [e["seq"] for e in json.loads(listed.stdout)] == [e["seq"] for e in events]

    human = await cli(forgeline, "build", "site", "--prompt", "create hello.txt", "--wait")
    assert human.returncode == 0, human.stderr
    assert "completed" in human.stdout
    # The live view (stderr) showed the steps; hello.txt was there already: no commit.
    assert "checkout" in human.stderr
    assert "commit skipped" in human.stderr


async def test_failed_build_exits_1_and_cancel(forgeline: Running, model: AnthropicServer) -> None:
    """A failing build: --wait exits 1. task cancel of a finished task is refused."""
    from tests.support.anthropic_server import ApiError, always

    await forgeline.create_project("bad")
    model.script = always(ApiError(500))
    failed = await cli(forgeline, "build", "bad", "--prompt", "x", "--wait", "--json")
    assert failed.returncode == 1
    task_id = json.loads(failed.stdout.splitlines()[-1])["task_id"]
    refused = await cli(forgeline, "task", "cancel", task_id)
    assert refused.returncode == 1
    assert "409" in refused.stderr


async def test_unknown_project_is_a_clear_error(forgeline: Running) -> None:
    """Building an unknown project prints the API's message and exits 1."""
    result = await cli(forgeline, "build", "ghost", "--prompt", "x")
    assert result.returncode == 1
    assert "no project named 'ghost'" in result.stderr
