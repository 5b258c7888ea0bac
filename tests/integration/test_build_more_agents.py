"""Builds end to end with the native Codex and Gemini CLIs: the HTTP API, the queue, a
worker, the real CLI in the bubblewrap sandbox against its scripted model server (reached
through the CLI's own variables in forgeline's environment, as an operator's gateway
would be), real git with a bare repository, and a signed callback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import TOOLS_BIN
from tests.support.callback_receiver import CallbackReceiver
from tests.support.forgeline_server import git, running_forgeline, server_settings
from tests.support.gemini_server import GeminiServer
from tests.support.responses_server import ResponsesServer

pytestmark = pytest.mark.claude  # the server's default provider is the pinned claude


@pytest.fixture(params=["codex", "gemini"])
def provider(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each native provider, its scripted model server named in forgeline's environment."""
    with ExitStack() as stack:
        if request.param == "codex":
            api = stack.enter_context(ResponsesServer())
            monkeypatch.setenv("OPENAI_BASE_URL", api.base_url)
            monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        else:
            gemini = stack.enter_context(GeminiServer())
            monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", gemini.base_url)
            monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        yield request.param


async def test_build_with_a_native_provider_commits_and_calls_back(
    provider: str, claude_bin: Path, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    """POST a build with ``provider`` → the CLI's tool call writes hello.txt in the sandbox →
    committed and pushed → signed callback with the commit → the task's agent summary has
    the session, the usage and an estimated cost."""
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"fake-model": {"input": 1.0, "output": 2.0}}}))
    settings = server_settings(
        tmp_path / "data",
        claude_bin,
        codex_bin=str(TOOLS_BIN / "codex"),
        gemini_bin=str(TOOLS_BIN / "gemini"),
        cli_max_retries=0,
        prices=prices,
    )
    async with running_forgeline(settings) as forgeline:
        await forgeline.create_project("native")
        task_id = await forgeline.build(
            "native",
            prompt="Create hello.txt please",
            provider=provider,
            model="fake-model",
            callback_url=receiver.url(),
        )
        events = await forgeline.events(task_id)
        result = events[-1]
        assert result["type"] == "result"
        assert result["data"]["status"] == "succeeded", result
        agent_events = [e for e in events if e["provider"] == provider]
        assert {"init", "tool_use", "tool_result"} <= {e["type"] for e in agent_events}
        task = await forgeline.wait_status(task_id, {"completed"})
        repo = Path(forgeline.settings.git_base_url) / "native.git"
        head = git("rev-parse", "main", cwd=repo)
        assert git("show", "main:hello.txt", cwd=repo) == "hello from the fake API"
        assert f"Forgeline-Task: {task_id}" in git("log", "-1", "--format=%B", "main", cwd=repo)
        assert task["result"]["artifacts"]["commit_sha"] == head
        summary = task["result"]["agent"]
        assert summary["provider"] == provider
        assert summary["session_id"]
        assert summary["usage"]["output_tokens"] > 0
        assert summary["cost_source"] == "estimated"
        assert summary["cost_usd"] > 0
        [delivery] = await receiver.wait_for(1, timeout_s=20)
        assert delivery.signature_valid
        payload = json.loads(delivery.body)
        assert payload["status"] == "completed"
        assert payload["result"]["artifacts"]["commit_sha"] == head
