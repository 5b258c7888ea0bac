"""The ACP adapter against a real ACP agent: ``opencode acp`` (the pinned opencode of
tools/package.json), in the bubblewrap sandbox builds use, talking to the scripted
chat-completions server, and a build end to end through the API with it as provider."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from forgeline.adapters.agents.acp import AcpAgent
from forgeline.adapters.workspace.proctree import processes_in
from forgeline.adapters.workspace.sandbox import BubblewrapWorkspace
from forgeline.domain.agent import (
    AgentEvent,
    AgentRequest,
    ErrorData,
    RunStatus,
    StatusData,
    ToolResultData,
    ToolUseData,
)
from tests.integration.test_opencode import make_repo
from tests.support.agent_runs import live
from tests.support.forgeline_server import git, running_forgeline, server_settings
from tests.support.openai_server import RecordedRequest, Reply, ScriptedOpenAI, scripted_openai
from tests.unit.test_acp_agent import result_of
from tests.unit.test_acp_agent import run as collect

__all__ = ["scripted_openai"]  # the module-scoped fixture, re-exported for pytest

pytestmark = [pytest.mark.opencode, pytest.mark.asyncio(loop_scope="module")]

NAME = "opencode-acp"
#: What opencode needs besides the usual: its configuration naming the scripted server.
PASS_ENV = (
    "OPENCODE_CONFIG_CONTENT",
    "OPENCODE_DISABLE_MODELS_FETCH",
    "OPENCODE_DISABLE_AUTOUPDATE",
)


def opencode_environ(llm: ScriptedOpenAI, **config: object) -> dict[str, str]:
    """forgeline's environment as an operator would set it for ``opencode acp``."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "OPENCODE_CONFIG_CONTENT": json.dumps(llm.opencode_config(**config)),
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
    }


def make_agent(
    opencode_bin: Path,
    state: Path,
    llm: ScriptedOpenAI,
    mode: str = "bypassPermissions",
    **config: object,
) -> AcpAgent:
    """The adapter on ``opencode acp`` in the sandbox."""
    return AcpAgent(
        name=NAME,
        command=[str(opencode_bin), "acp"],
        workspace=BubblewrapWorkspace(),
        state_dir=str(state),
        environ=opencode_environ(llm, **config),
        pass_env=PASS_ENV,
        permission_mode=mode,
        cancel_grace_s=1.5,
    )


@pytest.fixture
def llm(scripted_openai: ScriptedOpenAI) -> Iterator[ScriptedOpenAI]:
    """The scripted model server, with a clean record and the default script."""
    scripted_openai.reset()
    yield scripted_openai
    scripted_openai.reset()


@pytest_asyncio.fixture(loop_scope="module")
async def agent(opencode_bin: Path, tmp_path: Path, llm: ScriptedOpenAI) -> AsyncIterator[AcpAgent]:
    """The adapter under test, closed afterwards."""
    adapter = make_agent(opencode_bin, tmp_path / "state", llm)
    try:
        yield adapter
    finally:
        await adapter.aclose()


def request(repo: Path, prompt: str, **kw: object) -> AgentRequest:
    """A request for ``repo`` under the project state ``proj``."""
    return AgentRequest(prompt=prompt, workdir=str(repo), provider=NAME, state_key="proj", **kw)  # type: ignore[arg-type]


def perl_sleep(seconds: str, marker: Path) -> Reply:
    """A bash tool call running a long perl (claude refuses ``sleep`` chains; this is
    the command the suite uses everywhere for long tools)."""
    return Reply(
        tool="bash",
        arguments={
            "command": f"perl -e 'sleep {seconds}' && echo slept > {marker}",
            "description": "wait",
        },
    )


async def test_write_tool_succeeds_in_the_sandbox(
    agent: AcpAgent, llm: ScriptedOpenAI, tmp_path: Path
) -> None:
    """A write tool call makes the file in the checkout; events in order; tokens counted;
    capabilities say what opencode offers (session/load: resume)."""
    repo = make_repo(tmp_path / "proj")
    events = await collect(agent, request(repo, "Create it. PATH=hello.txt"))
    result = result_of(events)
    assert result.status is RunStatus.SUCCEEDED, events
    assert (repo / "hello.txt").read_text() == "hello from fake model\n"
    types = [e.type for e in events]
    assert types[0] == "init"
    assert types.index("tool_use") < types.index("tool_result") < types.index("message")
    use = next(e.data for e in events if isinstance(e.data, ToolUseData))
    assert dict(use.input)["filePath"] == "hello.txt"
    out = next(e.data for e in events if isinstance(e.data, ToolResultData))
    assert not out.is_error
    assert result.text == "done"
    assert result.usage.input_tokens > 0
    assert result.usage.output_tokens > 0
    assert result.session_id
    caps = await agent.capabilities()
    assert caps.available
    assert caps.resume
    assert caps.version == "1.18.33"
    assert "cost only if the agent reports it" in (caps.detail or "")


@pytest.mark.parametrize(
    ("mode", "decision"), [("bypassPermissions", "allowed"), ("default", "refused")]
)
async def test_permission_request_answered_by_mode(
    opencode_bin: Path, llm: ScriptedOpenAI, tmp_path: Path, mode: str, decision: str
) -> None:
    """opencode configured to ask before bash: the mode decides, and the command runs only
    when allowed."""
    repo = make_repo(tmp_path / "proj")
    marker = repo / "ran.txt"
    adapter = make_agent(
        opencode_bin, tmp_path / "state", llm, mode=mode, permission={"bash": "ask"}
    )

    def script(req: RecordedRequest) -> Reply:
        if req.is_title_request:
            return Reply(text="title")
        if req.last_role == "tool":
            return Reply(text="done")
        return Reply(
            tool="bash", arguments={"command": f"echo ran > {marker}", "description": "run"}
        )

    with llm.scripted(script):
        events = await collect(adapter, request(repo, "run it"))
    await adapter.aclose()
    result = result_of(events)
    asked = [
        e.data for e in events if isinstance(e.data, StatusData) and e.data.state == "permission"
    ]
    assert [s.detail["decision"] for s in asked] == [decision]
    assert asked[0].detail["kind"] == "execute"
    if decision == "allowed":
        assert result.status is RunStatus.SUCCEEDED, events
        assert marker.read_text() == "ran\n"
    else:
        assert not marker.exists()
        assert "permission_denied" in [e.data.kind for e in events if isinstance(e.data, ErrorData)]


async def test_cancel_during_a_long_tool_leaves_nothing(
    agent: AcpAgent, llm: ScriptedOpenAI, tmp_path: Path
) -> None:
    """cancel() while the bash tool runs a long perl: the run ends cancelled, and ps shows
    neither the perl nor any process in the checkout (opencode included)."""
    repo = make_repo(tmp_path / "proj")
    seconds = f"{60 + uuid.uuid4().int % 30}.{uuid.uuid4().int % 10**5:05d}"
    marker = repo / "slept.txt"
    req = request(repo, "wait a while")
    events: list[AgentEvent] = []
    with llm.scripted(
        lambda r: Reply(text="done") if r.last_role == "tool" else perl_sleep(seconds, marker)
    ):
        async with asyncio.timeout(150):
            async for event in agent.execute(req):
                events.append(event)
                if event.type == "tool_use":
                    while not live(f"sleep {seconds}"):  # noqa: ASYNC110 - another process's state
                        await asyncio.sleep(0.1)
                    await agent.cancel(req.run_id)
    result = result_of(events)
    assert result.status is RunStatus.CANCELLED
    assert not live(f"sleep {seconds}")
    assert processes_in(str(repo)) == []
    assert not marker.exists()


async def test_timeout_ends_run_and_processes(
    agent: AcpAgent, llm: ScriptedOpenAI, tmp_path: Path
) -> None:
    """Past timeout_s the run ends timed_out and nothing of it is left running."""
    repo = make_repo(tmp_path / "proj")
    seconds = f"{60 + uuid.uuid4().int % 30}.{uuid.uuid4().int % 10**5:05d}"
    with llm.scripted(
        lambda r: Reply(text="done") if r.last_role == "tool" else perl_sleep(seconds, repo / "m")
    ):
        events = await collect(agent, request(repo, "wait", timeout_s=25))
    result = result_of(events)
    assert result.status is RunStatus.TIMED_OUT
    assert not live(f"sleep {seconds}")
    assert processes_in(str(repo)) == []


async def test_model_api_failure_fails_with_its_message(
    agent: AcpAgent, llm: ScriptedOpenAI, tmp_path: Path
) -> None:
    """A 401 from the model API ends the run failed, with the API's message."""
    repo = make_repo(tmp_path / "proj")
    events = await collect(agent, request(repo, "FAIL401 please"))
    result = result_of(events)
    assert result.status is RunStatus.FAILED
    assert "Incorrect API key provided (fake 401)" in result.text
    assert "agent_error" in [e.data.kind for e in events if isinstance(e.data, ErrorData)]


async def test_resume_loads_the_session(
    agent: AcpAgent, llm: ScriptedOpenAI, tmp_path: Path
) -> None:
    """session/load in a new agent process continues the session: the model sees the
    earlier turn, and the replayed history is not emitted again. (The same checkout: in
    the sandbox opencode 1.18.33 cannot continue a session from another checkout, its
    first one being invisible there; it answers "OpenCode service failure".)"""
    repo = make_repo(tmp_path / "proj")
    events = await collect(agent, request(repo, "TEXTONLY remember the word pelican"))
    earlier = result_of(events)
    assert earlier.status is RunStatus.SUCCEEDED
    events = await collect(
        agent, request(repo, "TEXTONLY what was the word?", resume_session=earlier.session_id)
    )
    result = result_of(events)
    assert result.status is RunStatus.SUCCEEDED, events
    assert result.session_id == earlier.session_id
    last = [r for r in llm.requests if not r.is_title_request][-1]
    assert "remember the word pelican" in json.dumps(last.body["messages"])
    texts = [e.data.text for e in events if e.type == "message"]  # type: ignore[union-attr]
    assert texts == ["plain answer from fake model"]


async def test_build_end_to_end_with_an_acp_provider(
    opencode_bin: Path,
    claude_bin: Path,
    llm: ScriptedOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FORGELINE_ACP_AGENTS makes opencode-acp a provider: GET /agents lists it, and a
    build with it commits the agent's file and pushes it."""
    for key, value in opencode_environ(llm).items():
        monkeypatch.setenv(key, value)
    settings = server_settings(
        tmp_path / "data",
        claude_bin,
        acp_agents={NAME: {"command": [str(opencode_bin), "acp"], "env": list(PASS_ENV)}},
    )
    async with running_forgeline(settings) as running:
        listed = (await running.client.get("/agents")).json()
        entry = next(
            a
            for a in (listed["agents"] if isinstance(listed, dict) else listed)
            if a["name"] == NAME
        )
        assert entry["available"]
        await running.create_project("acpapp")
        task_id = await running.build("acpapp", prompt="Create it. PATH=hello.txt", provider=NAME)
        events = await running.events(task_id)
        assert events[-1]["data"]["status"] == "succeeded", events
        assert all(e["provider"] == NAME for e in events if e["type"] in {"init", "tool_use"})
        task = await running.wait_status(task_id, {"completed"}, timeout_s=60)
        assert task["result"]["artifacts"]["commit_sha"]
        repo = Path(running.settings.git_base_url) / "acpapp.git"
        assert git("show", "main:hello.txt", cwd=repo) == "hello from fake model"
