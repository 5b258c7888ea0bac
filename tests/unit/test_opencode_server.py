"""The managed server's environment and configuration, without starting it."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from forgeline.adapters.agents.opencode.server import ManagedServer, read_config_content
from forgeline.adapters.workspace.local import LocalWorkspace
from forgeline.domain.errors import AgentUnavailableError, ConfigurationError
from forgeline.domain.secrets import Secret


def test_environment_is_explicit_and_sandboxed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only allowed and provider variables pass; HOME, XDG and the password cannot be
    replaced by anything inherited or extra."""
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-worker-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-operator")
    monkeypatch.setenv("OPENCODE_SERVER_PASSWORD", "inherited")
    server = ManagedServer(
        binary="opencode",
        workspace=LocalWorkspace(),
        state_dir=tmp_path,
        config_content='{"model": "fake/fake-model"}',
        extra_env={"OPENCODE_SERVER_PASSWORD": "extra", "HOME": "/elsewhere", "FOO": "bar"},
    )
    env = server._environment(Secret("generated-password"))
    assert "GITHUB_TOKEN" not in env
    assert env["OPENAI_API_KEY"] == "sk-operator"
    assert env["FOO"] == "bar"
    assert env["OPENCODE_SERVER_PASSWORD"] == "generated-password"
    assert env["HOME"] == str(tmp_path / "home")
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        assert env[name].startswith(str(tmp_path / "home"))
    assert env["OPENCODE_DISABLE_MODELS_FETCH"] == "1"
    assert json.loads(env["OPENCODE_CONFIG_CONTENT"]) == {"model": "fake/fake-model"}


def test_config_file_must_be_a_json_object(tmp_path: Path) -> None:
    """FORGELINE_OPENCODE_CONFIG is read once and checked; bad files are configuration errors."""
    assert read_config_content(None) is None
    good = tmp_path / "good.json"
    good.write_text('{"provider": {}}')
    assert read_config_content(good) == '{"provider": {}}'
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        read_config_content(bad)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(ConfigurationError, match="JSON object"):
        read_config_content(listed)
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_config_content(tmp_path / "missing.json")


async def test_missing_binary_is_reported_unavailable(tmp_path: Path) -> None:
    """A binary that does not exist gives available=False with a reason, never an error."""
    server = ManagedServer(
        binary=str(tmp_path / "no-opencode"), workspace=LocalWorkspace(), state_dir=tmp_path
    )
    check = await server.check()
    assert not check.available
    assert check.detail is not None
    assert "no-opencode" in check.detail


def fake_binary(tmp_path: Path, body: str) -> str:
    """A shell script standing in for opencode."""
    script = tmp_path / "fake-opencode"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


async def test_server_exiting_before_listening_is_unavailable(tmp_path: Path) -> None:
    """A server that dies at start (the port race of P13) is retried, then reported with
    its own words."""
    binary = fake_binary(tmp_path, 'echo "Error: ServeError" >&2; exit 1')
    server = ManagedServer(binary=binary, workspace=LocalWorkspace(), state_dir=tmp_path / "state")
    with pytest.raises(AgentUnavailableError, match="ServeError"):
        await server.client()
    await server.aclose()


async def test_cancel_during_start_leaves_no_process(tmp_path: Path) -> None:
    """Giving up while the server starts ends the half-started process."""
    binary = fake_binary(tmp_path, "exec sleep 53.25")
    server = ManagedServer(binary=binary, workspace=LocalWorkspace(), state_dir=tmp_path / "state")
    starting = asyncio.create_task(server.client())
    async with asyncio.timeout(10):
        while server.pid is None:  # noqa: ASYNC110 - the child appears without an event
            await asyncio.sleep(0.01)
    pid = server.pid
    assert pid is not None
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    with pytest.raises(ProcessLookupError):  # gone before aclose: the cancel ended it
        os.kill(pid, 0)
    await server.aclose()
