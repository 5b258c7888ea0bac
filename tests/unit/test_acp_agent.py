"""The ACP adapter against a tiny scripted ACP agent (tests/support/fake_acp_agent.py).

The fake speaks JSON-RPC over stdio as real agents do and misbehaves on request (garbled
and oversized lines, a crash, an error answer, a tool command that never ends), so every
guarantee of the port is checked here in seconds; tests/integration/test_acp.py runs the
real ``opencode acp``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from acp.schema import PermissionOption

from forgeline.adapters.agents.acp import AcpAgent
from forgeline.adapters.agents.acp.agent import build_child_env, choose_permission
from forgeline.adapters.workspace.local import LocalWorkspace
from forgeline.adapters.workspace.proctree import processes_in
from forgeline.domain.agent import (
    AgentEvent,
    AgentRequest,
    AgentResult,
    ErrorData,
    InitData,
    MessageData,
    RunStatus,
    StatusData,
    ToolResultData,
    ToolUseData,
)
from forgeline.ports.workspace import Workspace

FAKE = Path(__file__).resolve().parents[1] / "support" / "fake_acp_agent.py"
FAKE_KUBECTL = Path(__file__).resolve().parents[1] / "support" / "fake_kubectl"


def make_agent(
    tmp_path: Path,
    *,
    mode: str = "bypassPermissions",
    workspace: Workspace | None = None,
    **env: str,
) -> AcpAgent:
    """The adapter on the fake, unsandboxed by default (the sandbox has tests of its own)."""
    return AcpAgent(
        name="fake-acp",
        command=[sys.executable, str(FAKE)],
        workspace=workspace or LocalWorkspace(),
        state_dir=str(tmp_path / "state"),
        environ={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "FAKE_ACP_PIDFILE": str(tmp_path / "pid"),
            **env,
        },
        pass_env=["FAKE_ACP_PIDFILE", "FAKE_ACP_LOAD", "FAKE_ACP_HONOUR_CANCEL"],
        permission_mode=mode,
        line_limit=1024 * 1024,
        cancel_grace_s=1.0,
    )


def request(tmp_path: Path, prompt: str, **kw: object) -> AgentRequest:
    """A request whose checkout is ``tmp_path/work``."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return AgentRequest(prompt=prompt, workdir=str(work), provider="fake-acp", **kw)  # type: ignore[arg-type]


async def run(agent: AcpAgent, req: AgentRequest) -> list[AgentEvent]:
    """Every event of a run, bounded in time."""
    async with asyncio.timeout(150):
        return [event async for event in agent.execute(req)]


def result_of(events: list[AgentEvent]) -> AgentResult:
    """The one result, last."""
    assert [e.is_result for e in events].count(True) == 1, events
    assert isinstance(events[-1].data, AgentResult)
    return events[-1].data


def errors(events: list[AgentEvent]) -> list[ErrorData]:
    """The error payloads of a run."""
    return [e.data for e in events if isinstance(e.data, ErrorData)]


async def cancel_at_tool(
    agent: AcpAgent, req: AgentRequest, check: Callable[[], bool] = lambda: True
) -> list[AgentEvent]:
    """The events of a run cancelled when its tool call shows (``check`` holding then)."""
    events: list[AgentEvent] = []
    async with asyncio.timeout(60):
        async for event in agent.execute(req):
            events.append(event)
            if event.type == "tool_use":
                assert check()
                await agent.cancel(req.run_id)
    return events


def alive(pid: int) -> bool:
    """True when ``ps`` shows ``pid`` running (zombies do not count)."""
    out = subprocess.run(
        ["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return bool(out.stdout.strip()) and not out.stdout.strip().startswith("Z")


async def test_tool_call_writes_a_file_and_the_run_succeeds(tmp_path: Path) -> None:
    """Session updates become init, tool_use (with the input sent once the call runs),
    tool_result, a plan status and one message; the prompt's usage is the result's."""
    events = await run(make_agent(tmp_path), request(tmp_path, "write it"))
    result = result_of(events)
    assert result.status is RunStatus.SUCCEEDED
    assert result.text == "done"
    assert result.session_id == "sess-1"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (100, 10)
    assert (tmp_path / "work" / "hello.txt").read_text() == "hello from fake acp\n"
    kinds = [e.type for e in events]
    assert kinds == ["init", "tool_use", "tool_result", "status", "message", "result"]
    assert isinstance(events[0].data, InitData)
    assert events[0].data.cwd == str(tmp_path / "work")
    use, out = events[1].data, events[2].data
    assert isinstance(use, ToolUseData)
    assert isinstance(out, ToolResultData)
    assert (use.name, dict(use.input)) == ("write", {"filePath": "hello.txt"})
    assert out.output == "Wrote file successfully."
    assert not out.is_error
    assert all(e.session_id == "sess-1" for e in events)


async def test_garbled_lines_are_error_events_and_the_run_goes_on(tmp_path: Path) -> None:
    """A line that is not JSON and one that is not JSON-RPC each give a protocol error."""
    events = await run(make_agent(tmp_path), request(tmp_path, "GARBLE then write"))
    assert result_of(events).status is RunStatus.SUCCEEDED
    found = errors(events)
    assert [e.kind for e in found] == ["protocol", "protocol"]
    assert "this is not json" in found[0].message
    assert "[1, 2, 3]" in found[1].message


async def test_unknown_update_kinds_are_tolerated_and_malformed_ones_reported(
    tmp_path: Path,
) -> None:
    """A newer agent's update kind passes quietly; a tool call without its id is a
    protocol error event; a thought becomes a thinking status; the run goes on."""
    events = await run(make_agent(tmp_path), request(tmp_path, "ODD"))
    assert result_of(events).status is RunStatus.SUCCEEDED
    found = errors(events)
    assert len(found) == 1
    assert found[0].kind == "protocol"
    assert "malformed session/update" in found[0].message
    assert "toolCallId" in found[0].message
    thoughts = [e.data for e in events if isinstance(e.data, StatusData)]
    assert [(t.state, t.detail["text"]) for t in thoughts] == [("thinking", "hmm")]
    assert [e.data.text for e in events if isinstance(e.data, MessageData)] == ["odd but fine"]


async def test_an_oversized_message_fails_the_run(tmp_path: Path) -> None:
    """A line over the limit ends the run as failed with a protocol error, nothing left."""
    agent = make_agent(tmp_path)
    events = await run(agent, request(tmp_path, "HUGE"))
    result = result_of(events)
    assert result.status is RunStatus.FAILED
    assert "longer than the 1048576-byte limit" in result.text
    assert [e.kind for e in errors(events)] == ["protocol"]


@pytest.mark.parametrize(
    ("mode", "kind", "outcome", "refused"),
    [
        ("bypassPermissions", "execute", "selected:yes", False),
        ("acceptEdits", "edit", "selected:yes", False),
        ("acceptEdits", "execute", "selected:no", True),
        ("default", "read", "selected:yes", False),
        ("default", "edit", "selected:no", True),
    ],
)
async def test_permission_requests_follow_the_mode(
    tmp_path: Path, mode: str, kind: str, outcome: str, refused: bool
) -> None:
    """The agent's request is answered with its own allow or reject option, visibly."""
    events = await run(make_agent(tmp_path, mode=mode), request(tmp_path, f"ASK={kind}"))
    assert result_of(events).status is RunStatus.SUCCEEDED
    messages = [e.data.text for e in events if isinstance(e.data, MessageData)]
    assert messages == [f"outcome={outcome}"]
    statuses = [e.data for e in events if isinstance(e.data, StatusData)]
    assert statuses[0].state == "permission"
    assert statuses[0].detail["decision"] == ("refused" if refused else "allowed")
    assert [e.kind for e in errors(events)] == (["permission_denied"] if refused else [])


def test_no_matching_option_is_a_cancelled_outcome() -> None:
    """An agent offering no reject option is refused with the cancelled outcome."""
    only_allow = [PermissionOption(option_id="y", name="Allow", kind="allow_once")]
    allowed, answer = choose_permission("default", "execute", only_allow)
    assert not allowed
    assert answer.outcome.outcome == "cancelled"


async def test_agent_crash_fails_with_its_stderr(tmp_path: Path) -> None:
    """An agent that exits mid-turn ends the run failed, with exit code and last words."""
    events = await run(make_agent(tmp_path), request(tmp_path, "EXIT"))
    result = result_of(events)
    assert result.status is RunStatus.FAILED
    assert "exit code 3" in result.text
    assert "boom: model exploded" in result.text
    assert [e.kind for e in errors(events)] == ["process_exited"]


async def test_model_api_error_fails_with_the_agents_message(tmp_path: Path) -> None:
    """The prompt's JSON-RPC error (a 401 upstream) is the failure's message."""
    events = await run(make_agent(tmp_path), request(tmp_path, "ERROR"))
    result = result_of(events)
    assert result.status is RunStatus.FAILED
    assert "Incorrect API key provided (fake 401)" in result.text
    assert [e.kind for e in errors(events)] == ["agent_error"]


async def test_reported_cost_is_the_results_and_the_budget_holds(tmp_path: Path) -> None:
    """A usage_update's USD cost becomes cost_usd; past max_cost_usd the run fails."""
    events = await run(make_agent(tmp_path), request(tmp_path, "COST=0.5"))
    result = result_of(events)
    assert (result.status, result.cost_usd) == (RunStatus.SUCCEEDED, 0.5)
    over = await run(make_agent(tmp_path), request(tmp_path, "COST=0.5", max_cost_usd=0.1))
    result = result_of(over)
    assert result.status is RunStatus.FAILED
    assert "passed the budget" in result.text
    assert "budget_exceeded" in [e.kind for e in errors(over)]


async def test_resume_without_load_session_is_a_clear_failure(tmp_path: Path) -> None:
    """An agent without loadSession: capabilities say no resume, a resume fails saying why."""
    agent = make_agent(tmp_path)
    caps = await agent.capabilities()
    assert caps.available
    assert not caps.resume
    assert caps.version == "0.0.7"
    assert "no resume" in (caps.detail or "")
    events = await run(agent, request(tmp_path, "write", resume_session="sess-0"))
    result = result_of(events)
    assert result.status is RunStatus.FAILED
    assert "does not offer session/load" in result.text
    assert [e.kind for e in errors(events)] == ["resume_unsupported"]
    await agent.aclose()


async def test_resume_loads_the_session_without_replaying_it(tmp_path: Path) -> None:
    """With loadSession, the run continues the session; the replayed history is not
    emitted and the cost is counted from the session's earlier total."""
    agent = make_agent(tmp_path, FAKE_ACP_LOAD="1")
    assert (await agent.capabilities()).resume
    events = await run(agent, request(tmp_path, "COST=0.75", resume_session="sess-0"))
    result = result_of(events)
    assert result.status is RunStatus.SUCCEEDED
    assert result.session_id == "sess-0"
    assert result.cost_usd == pytest.approx(0.5)
    texts = [e.data.text for e in events if isinstance(e.data, MessageData)]
    assert texts == ["spent"]
    await agent.aclose()


async def test_a_session_the_agent_cannot_load_fails_saying_so(tmp_path: Path) -> None:
    """session/load refused by the agent: failed, with its words and the session named."""
    agent = make_agent(tmp_path, FAKE_ACP_LOAD="1")
    events = await run(agent, request(tmp_path, "write", resume_session="unknown"))
    result = result_of(events)
    assert result.status is RunStatus.FAILED
    assert "could not load session unknown: Invalid session identifier" in result.text
    assert [e.kind for e in errors(events)] == ["resume_failed"]


@pytest.mark.parametrize("honours_cancel", [True, False])
async def test_cancel_during_a_long_tool_leaves_no_process(
    tmp_path: Path, honours_cancel: bool
) -> None:
    """cancel() mid-tool ends the run cancelled; the tool's process, in a session of its
    own, is gone too (checked with ps), whether or not the agent answers session/cancel."""
    agent = make_agent(tmp_path, FAKE_ACP_HONOUR_CANCEL="1" if honours_cancel else "")
    req = request(tmp_path, "HANG")
    events = await cancel_at_tool(agent, req, lambda: alive(int((tmp_path / "pid").read_text())))
    pid = int((tmp_path / "pid").read_text())
    result = result_of(events)
    assert result.status is RunStatus.CANCELLED
    assert not alive(pid)
    await agent.cancel(req.run_id)  # after the end: a no-op


async def test_timeout_ends_the_run_and_its_processes(tmp_path: Path) -> None:
    """Past timeout_s the run ends timed_out, and nothing of it is left."""
    events = await run(make_agent(tmp_path), request(tmp_path, "HANG", timeout_s=3))
    result = result_of(events)
    assert result.status is RunStatus.TIMED_OUT
    assert not alive(int((tmp_path / "pid").read_text()))


async def test_idle_timeout(tmp_path: Path) -> None:
    """No output for idle_timeout_s ends the run timed_out."""
    events = await run(make_agent(tmp_path), request(tmp_path, "HANG", idle_timeout_s=2))
    result = result_of(events)
    assert result.status is RunStatus.TIMED_OUT
    assert "no output" in result.text


async def test_cancel_before_start(tmp_path: Path) -> None:
    """A run cancelled before it starts ends at once, cancelled, starting nothing."""
    agent = make_agent(tmp_path)
    req = request(tmp_path, "write")
    await agent.cancel(req.run_id)
    events = await run(agent, req)
    assert [e.type for e in events] == ["result"]
    assert result_of(events).status is RunStatus.CANCELLED
    assert not (tmp_path / "work" / "hello.txt").exists()


async def test_cancel_while_the_agent_starts(tmp_path: Path) -> None:
    """A cancel that comes while the agent's process is being started ends the run
    cancelled, with that process gone and no prompt sent."""
    agent = make_agent(tmp_path)
    req = request(tmp_path, "write")
    consumer = asyncio.create_task(run(agent, req))
    await asyncio.sleep(0)  # the run is registered and starting its process
    await agent.cancel(req.run_id)
    events = await consumer
    assert [e.type for e in events] == ["result"]
    assert result_of(events).status is RunStatus.CANCELLED
    assert not (tmp_path / "work" / "hello.txt").exists()
    assert processes_in(str(tmp_path / "work")) == []


async def test_closing_the_stream_early_ends_the_agent(tmp_path: Path) -> None:
    """A consumer that stops iterating mid-run leaves no process behind."""
    agent = make_agent(tmp_path)
    stream = agent.execute(request(tmp_path, "HANG"))
    async with asyncio.timeout(60):
        async for event in stream:
            if event.type == "tool_use":
                break
        await stream.aclose()
    assert not alive(int((tmp_path / "pid").read_text()))


async def test_credentials_reach_the_agent(tmp_path: Path) -> None:
    """The request's env (a build's credentials) is in the agent's environment."""
    events = await run(
        make_agent(tmp_path), request(tmp_path, "write", env={"FAKE_ACP_SECRET": "s3cr3t"})
    )
    texts = [e.data.text for e in events if isinstance(e.data, MessageData)]
    assert texts[0].startswith("secret-arrived")
    assert "s3cr3t" not in str([e.to_dict() for e in events])


def test_child_env_is_explicit() -> None:
    """Only allow-listed, provider and named variables pass; HOME is the agent home."""
    environ = {
        "PATH": "/bin",
        "OPENAI_API_KEY": "k",
        "FORGELINE_MASTER_KEY": "m",
        "MY_AGENT_CONFIG": "c",
        "UNRELATED": "u",
    }
    env = build_child_env(environ, {"GIT_TOKEN": "t"}, home="/h", pass_env=["MY_AGENT_CONFIG"])
    assert env["OPENAI_API_KEY"] == "k"
    assert env["MY_AGENT_CONFIG"] == "c"
    assert env["GIT_TOKEN"] == "t"
    assert env["HOME"] == "/h"
    assert "FORGELINE_MASTER_KEY" not in env
    assert "UNRELATED" not in env


async def test_missing_program_is_unavailable(tmp_path: Path) -> None:
    """An agent whose program is missing is reported unavailable, saying why."""
    await assert_unavailable(tmp_path, ["/nonexistent/agent", "--acp"], LocalWorkspace(), "agent")


async def assert_unavailable(
    tmp_path: Path, command: list[str], workspace: object, says: str
) -> None:
    """The provider reports itself unavailable (``says`` in the detail); runs fail."""
    agent = AcpAgent(
        name="fake-acp",
        command=command,
        workspace=workspace,  # type: ignore[arg-type]
        state_dir=str(tmp_path / "state"),
    )
    caps = await agent.capabilities()
    assert not caps.available
    assert says in (caps.detail or "")
    events = await run(agent, request(tmp_path, "x"))
    assert result_of(events).status is RunStatus.FAILED
    await agent.aclose()


class _NoStdio:
    """A workspace that cannot converse over stdio (as the kubernetes one today)."""

    name = "kubernetes"

    async def ensure_dir(self, path: str) -> None:
        """Nothing to make."""


async def test_a_workspace_without_stdio_is_unavailable(tmp_path: Path) -> None:
    """Where the workspace offers no duplex spawn, the provider says so and runs fail."""
    command = [sys.executable, str(FAKE)]
    await assert_unavailable(tmp_path, command, _NoStdio(), "cannot run ACP agents")


async def test_acp_over_kubernetes_exec(tmp_path: Path) -> None:
    """In a pod (the fake kubectl runs the "pod" on this host) the conversation rides the
    exec stream: a run succeeds, and a cancelled one leaves no process in the "pod"."""
    from forgeline.adapters.workspace.kubernetes import KubernetesWorkspace

    pod = KubernetesWorkspace(
        pod="web-0", kubectl=str(FAKE_KUBECTL), kubectl_env={"PATH": os.environ["PATH"]}
    )
    agent = make_agent(tmp_path, workspace=pod)
    events = await run(agent, request(tmp_path, "write it"))
    assert result_of(events).status is RunStatus.SUCCEEDED
    assert (tmp_path / "work" / "hello.txt").exists()
    hung = await cancel_at_tool(agent, request(tmp_path, "HANG"))
    assert result_of(hung).status is RunStatus.CANCELLED
    assert not alive(int((tmp_path / "pid").read_text()))
