"""Credentials reach the agent and nowhere else: the real ``claude`` runs ``env`` in its Bash
tool; the model sees the value, forgeline's events, result, callback and logs do not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.anthropic_server import AnthropicServer, ApiRequest, Reply, bash, text
from tests.support.callback_receiver import CallbackReceiver
from tests.support.forgeline_server import CALLBACK_SECRET, running_forgeline, server_settings

pytestmark = pytest.mark.claude

SECRET = "dep-tok-4f1c9a2e7b3d5f60"


def _env_then_echo(req: ApiRequest) -> Reply:
    if req.tool_results:
        # The model repeats what it saw, as a model would: the secret is in its answer too.
        seen = json.dumps(req.tool_results[-1].get("content"))
        marker = "present" if SECRET in seen else "absent"
        return [text(f"The token is {SECRET} ({marker} in env)")]
    return [bash("env; echo TOKEN=$DEPLOY_TOKEN > token.txt")]


async def test_injected_credential_is_redacted_everywhere(
    tmp_path: Path,
    claude_bin: Path,
    model: AnthropicServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The value reaches the agent's environment (the model server sees it in the tool
    output) but forgeline's events, task result, callback and logs show [REDACTED:<name>]."""
    model.script = _env_then_echo
    receiver = CallbackReceiver(CALLBACK_SECRET).start()
    settings = server_settings(tmp_path / "data", claude_bin, log_level="debug")
    try:
        async with running_forgeline(settings) as forgeline:
            put = await forgeline.client.put("/credentials/deploy-token", json={"value": SECRET})
            assert put.status_code == 200
            await forgeline.create_project("vault", credentials={"DEPLOY_TOKEN": "deploy-token"})
            task_id = await forgeline.build(
                "vault", prompt="show me the environment", callback_url=receiver.url()
            )
            events = await forgeline.events(task_id)
            task = await forgeline.wait_status(task_id, {"completed"})
            [delivery] = await receiver.wait_for(1, timeout_s=20)
            uses = await forgeline.container.credentials.uses(name="deploy-token")
    finally:
        receiver.stop()

    # The injection worked: the model received the real value in the Bash tool's output.
    tool_outputs = [json.dumps(r.tool_results) for r in model.message_requests if r.tool_results]
    assert any(SECRET in out for out in tool_outputs)

    mask = "[REDACTED:deploy-token]"
    shown = json.dumps(events)
    assert SECRET not in shown
    assert mask in shown
    assert any(e["type"] == "tool_result" and mask in e["data"]["output"] for e in events)
    assert SECRET not in json.dumps(task)
    assert mask in task["result"]["output"]
    assert SECRET not in delivery.body.decode()
    assert mask in delivery.body.decode()
    logs = capsys.readouterr()
    assert SECRET not in logs.out
    assert SECRET not in logs.err
    assert [u.task_id for u in uses] == [task_id]
