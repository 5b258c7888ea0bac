"""The CLI as a bot or a person uses it against a running forgeline: tokens, projects,
builds followed live, tasks shown and cancelled."""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.anthropic_server import (
    AnthropicServer,
    ApiRequest,
    Reply,
    bash,
    bash_then_done,
    text,
)
from tests.support.forgeline_server import Running, running_forgeline, server_settings
from tests.support.forgeline_server import run_cli as cli
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.claude


@pytest.fixture
async def forgeline(
    tmp_path: Path, claude_bin: Path, model: AnthropicServer
) -> AsyncIterator[Running]:
    """A running forgeline on embedded SQLite. Its event streams send a keep-alive comment
    after 0.2 s of silence (15 s by default), so every build followed here meets some."""
    settings = server_settings(tmp_path / "data", claude_bin, sse_keepalive_s=0.2)
    async with running_forgeline(settings) as running:
        yield running


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


def dense(stdout: str) -> list[dict[str, Any]]:
    """The events of a ``--json`` follow, asserting each came once, in order, to the result."""
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "result"
    return events


async def test_following_a_quiet_agent_survives_keep_alives(
    forgeline: Running, model: AnthropicServer
) -> None:
    """While the agent sleeps in Bash, the stream carries only keep-alive comments: build
    --wait and task events follow through them to the build's end and exit 0."""
    model.script = bash_then_done("sleep 2")
    await forgeline.create_project("quiet")
    built = await cli(forgeline, "build", "quiet", "--prompt", "nap", "--wait", "--json")
    assert built.returncode == 0, built.stderr
    assert dense(built.stdout)[-1]["data"]["status"] == "succeeded"
    assert "warning" not in built.stderr

    task_id = await forgeline.build("quiet", prompt="nap again")
    followed = await cli(forgeline, "task", "events", task_id)
    assert followed.returncode == 0, followed.stderr
    assert f"{task_id} completed" in followed.stdout


async def test_a_cut_stream_resumes_where_it_stopped(
    forgeline: Running, model: AnthropicServer
) -> None:
    """The connection of build --wait is cut mid-build (and refused for a while): the CLI
    reconnects with Last-Event-ID and prints every event exactly once, exit 0."""
    proxy = TcpProxy(int(forgeline.url.rsplit(":", 1)[1]))

    def script(req: ApiRequest) -> Reply:
        if req.tool_results:
            # The CLI has followed since the first event; its first reconnects are refused.
            proxy.cut(refuse_s=1.5)
            return [text("done")]
        return [bash("echo one")]

    model.script = script
    try:
        await forgeline.create_project("flaky")
        built = await cli(
            forgeline, "build", "flaky", "--prompt", "x", "--wait", "--json", url=proxy.url
        )
    finally:
        proxy.stop()
    assert built.returncode == 0, built.stderr
    assert dense(built.stdout)[-1]["data"]["status"] == "succeeded"
