"""The Claude Code adapter against the real ``claude`` CLI and a scripted Anthropic API.

Every scenario runs the pinned CLI (``tools/node_modules/.bin/claude``) pointed at
:class:`~tests.support.anthropic_server.AnthropicServer` on 127.0.0.1. A fake CLI
(``tests/support/fake_claude.py``) is used only for output the real one cannot be made to
print. "No process left" is checked with ``ps``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from forgeline.adapters.agents.claude_code import ClaudeCodeAgent
from forgeline.adapters.agents.claude_code.agent import project_dir_name
from forgeline.adapters.workspace.kubernetes import KubernetesWorkspace
from forgeline.adapters.workspace.local import LocalWorkspace
from forgeline.adapters.workspace.sandbox import BubblewrapWorkspace
from forgeline.domain.agent import (
    TOOL_OUTPUT_LIMIT,
    AgentEvent,
    AgentRequest,
    ErrorData,
    RunStatus,
    StatusData,
    ToolResultData,
    ToolUseData,
)
from forgeline.domain.errors import PromptRequiredError
from forgeline.ports.agent import CodeAgent
from forgeline.ports.workspace import Workspace
from tests.support import fake_claude
from tests.support.agent_runs import collect, live, result_of
from tests.support.anthropic_server import (
    AnthropicServer,
    ApiError,
    ApiRequest,
    Hang,
    Reply,
    StallMidStream,
    always,
    bash,
    bash_then_done,
    hello_script,
    text,
    write,
)

pytestmark = pytest.mark.claude

FAKE_KUBECTL = Path(__file__).resolve().parents[1] / "support" / "fake_kubectl"

AgentFactory = Callable[..., ClaudeCodeAgent]


@pytest.fixture
def api() -> Iterator[AnthropicServer]:
    """A scripted Anthropic API (the hello.txt conversation unless a test changes it)."""
    with AnthropicServer(hello_script) as server:
        yield server


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh git repository as the agent's working directory."""
    path = tmp_path / "repo"
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


@pytest.fixture
def make_agent(claude_bin: Path, api: AnthropicServer, tmp_path: Path) -> AgentFactory:
    """Build ClaudeCodeAgents on the real CLI, the scripted API and a per-test state dir."""

    def factory(**overrides: Any) -> ClaudeCodeAgent:
        options: dict[str, Any] = {
            "workspace": LocalWorkspace(),
            "state_dir": str(tmp_path / "state"),
            "binary": str(claude_bin),
            "environ": {
                "PATH": os.environ["PATH"],
                "ANTHROPIC_BASE_URL": api.url,
                "ANTHROPIC_API_KEY": "sk-test",
                # As in the machine the reference was written on: must not reach the CLI.
                "IS_SANDBOX": "yes",
            },
            "max_retries": 0,
        }
        options.update(overrides)
        return ClaudeCodeAgent(**options)

    return factory


def unique_sleep() -> str:
    """A ``sleep`` argument no other process on the machine uses."""
    return f"{40 + uuid.uuid4().int % 50}.{uuid.uuid4().int % 10**6:06d}"


async def wait_for_tool_use(events: AsyncIterator[AgentEvent], seen: list[AgentEvent]) -> None:
    """Consume events until the first tool_use."""
    async for event in events:
        seen.append(event)
        if isinstance(event.data, ToolUseData):
            return
    raise AssertionError(f"no tool_use in {[e.type for e in seen]}")


# --- the real CLI ----------------------------------------------------------------------------


async def test_tool_call_writes_a_file_then_answers(
    make_agent: AgentFactory, api: AnthropicServer, repo: Path
) -> None:
    """Write tool, then text: the file exists, events in order, result with session/cost/usage."""
    events = await collect(make_agent(), AgentRequest(prompt="create hello.txt", workdir=str(repo)))
    assert [e.type for e in events] == [
        "init",
        "message",
        "tool_use",
        "tool_result",
        "message",
        "result",
    ]
    assert (repo / "hello.txt").read_text() == "hello from the fake API\n"
    result = result_of(events)
    assert result.status is RunStatus.SUCCEEDED
    assert result.text == "done"
    assert result.session_id
    assert all(e.session_id == result.session_id for e in events)
    assert result.cost_usd > 0
    assert result.usage.input_tokens == 200
    assert result.usage.output_tokens == 40
    assert result.num_turns == 2
    use = events[2].data
    assert isinstance(use, ToolUseData)
    assert use.name == "Write"
    assert use.input["file_path"] == f"{repo}/hello.txt"
    # The CLI was pointed at the scripted API and sent no side requests.
    assert [r.path for r in api.requests] == ["/", "/v1/messages", "/v1/messages"]


async def test_resume_continues_the_same_session(
    make_agent: AgentFactory, api: AnthropicServer, repo: Path
) -> None:
    """--resume keeps the session id, and the API sees the earlier conversation."""
    agent = make_agent()
    first = result_of(
        await collect(agent, AgentRequest(prompt="create hello.txt", workdir=str(repo)))
    )
    assert first.session_id
    events = await collect(
        agent,
        AgentRequest(prompt="what did you do?", workdir=str(repo), resume_session=first.session_id),
    )
    second = result_of(events)
    assert second.status is RunStatus.SUCCEEDED
    assert second.session_id == first.session_id
    last = api.message_requests[-1]
    assert last.prompt == "what did you do?"
    sent = json.dumps(last.messages)
    assert "create hello.txt" in sent
    assert "hello from the fake API" in sent
    assert second.text.startswith("ack: ")


async def test_resume_from_another_checkout_in_the_sandbox(
    make_agent: AgentFactory, api: AnthropicServer, tmp_path: Path
) -> None:
    """Each attempt of a build has a checkout of its own: a session recorded in one is
    resumed from another of the same project (its transcript is carried over), with the CLI
    in the sandbox as an unprivileged user (no IS_SANDBOX)."""
    agent = make_agent(workspace=BubblewrapWorkspace(), runs_as_root=False)
    first_dir, second_dir = tmp_path / "proj" / "task.1", tmp_path / "proj" / "task.2"
    for path in (first_dir, second_dir):
        path.mkdir(parents=True)
        await asyncio.to_thread(subprocess.run, ["git", "init", "-q", str(path)], check=True)
    first = result_of(
        await collect(
            agent,
            AgentRequest(prompt="create hello.txt", workdir=str(first_dir), state_key="proj"),
        )
    )
    assert first.status is RunStatus.SUCCEEDED
    assert (first_dir / "hello.txt").read_text() == "hello from the fake API\n"
    second = result_of(
        await collect(
            agent,
            AgentRequest(
                prompt="what did you do?",
                workdir=str(second_dir),
                state_key="proj",
                resume_session=first.session_id,
            ),
        )
    )
    assert second.status is RunStatus.SUCCEEDED, second.text
    assert second.session_id == first.session_id
    assert "hello from the fake API" in json.dumps(api.message_requests[-1].messages)


@pytest.mark.parametrize("name", ["plain_repo", "d" * 230 + "_é"])
async def test_transcripts_are_where_the_adapter_looks(
    make_agent: AgentFactory, tmp_path: Path, name: str
) -> None:
    """The CLI files a session under ``projects/<project_dir_name(cwd)>``, for a short cwd
    and for one past 200 characters (cut, hash appended) with non-ASCII in it."""
    workdir = tmp_path / name
    workdir.mkdir()
    agent = make_agent()
    request = AgentRequest(prompt="create hello.txt", workdir=str(workdir), state_key="k")
    result = result_of(await collect(agent, request))
    projects = tmp_path / "state" / "k" / "config" / "projects"
    assert (projects / project_dir_name(str(workdir)) / f"{result.session_id}.jsonl").is_file()


@pytest.mark.parametrize(
    ("status", "retries", "reason"),
    [(500, 1, "500"), (401, 0, "API key")],
)
async def test_api_errors_fail_with_the_reason(  # noqa: PLR0917 - fixtures + parameters
    make_agent: AgentFactory,
    api: AnthropicServer,
    repo: Path,
    status: int,
    retries: int,
    reason: str,
) -> None:
    """HTTP 500 / 401 with bounded retries: result failed, the reason in an error event."""
    api.script = always(ApiError(status))
    events = await collect(
        make_agent(max_retries=retries), AgentRequest(prompt="hi", workdir=str(repo))
    )
    result = result_of(events)
    assert result.status is RunStatus.FAILED
    assert reason in result.text
    errors = [e.data for e in events if isinstance(e.data, ErrorData)]
    assert errors
    assert reason in errors[0].message
    retrying = [e.data for e in events if isinstance(e.data, StatusData)]
    assert [s.attempt for s in retrying] == list(range(1, retries + 1))
    assert len(api.message_requests) == retries + 1


async def test_max_turns_ends_the_run_as_failed(
    make_agent: AgentFactory, api: AnthropicServer, repo: Path
) -> None:
    """--max-turns: the model keeps asking for Bash; the run fails with a max_turns error."""
    api.script = always([bash("echo turn")])
    events = await collect(
        make_agent(), AgentRequest(prompt="loop", workdir=str(repo), max_turns=1)
    )
    result = result_of(events)
    assert result.status is RunStatus.FAILED
    assert "maximum number of turns" in result.text
    assert any(isinstance(e.data, ErrorData) and e.data.kind == "max_turns" for e in events)


async def test_cancel_while_waiting_for_the_model(
    make_agent: AgentFactory, api: AnthropicServer, repo: Path
) -> None:
    """cancel() during a hung API call: cancelled result, bounded, no claude process left."""
    api.script = always(Hang(60))
    agent = make_agent()
    request = AgentRequest(prompt="hang", workdir=str(repo))
    events = agent.execute(request)
    seen = [await anext(events)]
    assert seen[0].type == "init"
    async with asyncio.timeout(30):
        while not api.message_requests:  # noqa: ASYNC110 - the server runs in another thread
            await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await agent.cancel(request.run_id)
    assert loop.time() - start < 5
    seen += [e async for e in events]
    result = result_of(seen)
    assert result.status is RunStatus.CANCELLED
    assert result.session_id == seen[0].session_id
    assert live(str(repo)) == []
    await agent.cancel(request.run_id)  # after the end: a no-op


async def test_cancel_during_a_bash_sleep_leaves_no_process(
    make_agent: AgentFactory, api: AnthropicServer, repo: Path
) -> None:
    """cancel() while the Bash tool runs sleep: cancelled, and ps shows no process of the run."""
    seconds = unique_sleep()
    api.script = bash_then_done(f"sleep {seconds}; echo finished > slept.txt")
    agent = make_agent()
    request = AgentRequest(prompt="sleep", workdir=str(repo))
    events = agent.execute(request)
    seen: list[AgentEvent] = []
    await wait_for_tool_use(events, seen)
    for _ in range(100):
        if live(f"sleep {seconds}"):
            break
        await asyncio.sleep(0.05)
    assert live(f"sleep {seconds}"), "the Bash tool's sleep should be running"
    canceller = asyncio.create_task(agent.cancel(request.run_id))
    seen += [e async for e in events]
    await canceller
    assert result_of(seen).status is RunStatus.CANCELLED
    assert live(f"sleep {seconds}") == []
    assert live(str(repo)) == []
    assert not (repo / "slept.txt").exists()


async def test_consumer_leaving_the_loop_kills_the_run(
    make_agent: AgentFactory, api: AnthropicServer, repo: Path
) -> None:
    """aclose() of the event stream mid-run: every process of the run is gone when it returns."""
    seconds = unique_sleep()
    api.script = bash_then_done(f"sleep {seconds}")
    events = make_agent().execute(AgentRequest(prompt="sleep", workdir=str(repo)))
    await wait_for_tool_use(events, [])
    for _ in range(100):
        if live(f"sleep {seconds}"):
            break
        await asyncio.sleep(0.05)
    await events.aclose()
    assert live(f"sleep {seconds}") == []
    assert live(str(repo)) == []


async def test_cancelling_the_consuming_task_kills_the_run(
    make_agent: AgentFactory, api: AnthropicServer, repo: Path
) -> None:
    """Cancelling the task that iterates: the processes are gone by the time it ends."""
    seconds = unique_sleep()
    api.script = bash_then_done(f"sleep {seconds}")
    agent = make_agent()
    started = asyncio.Event()

    async def consume() -> None:
        async for event in agent.execute(AgentRequest(prompt="sleep", workdir=str(repo))):
            if isinstance(event.data, ToolUseData):
                started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    for _ in range(100):
        if live(f"sleep {seconds}"):
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert live(f"sleep {seconds}") == []


async def consume_into(agent: CodeAgent, request: AgentRequest, out: list[AgentEvent]) -> None:
    """Collect a run's events into ``out``."""
    out.extend([event async for event in agent.execute(request)])


@pytest.mark.slow
async def test_cancel_at_any_moment_is_race_free(
    make_agent: AgentFactory, api: AnthropicServer, repo: Path
) -> None:
    """cancel() at moments from "at once" to "after the end", from two tasks at once:
    always exactly one result, cancel() bounded, nothing of the run left behind."""
    seconds = unique_sleep()
    api.script = bash_then_done(f"sleep 0.{seconds.split('.')[1]}")  # a short tool call
    agent = make_agent()
    statuses = []
    for delay in (0.0, 0.02, 0.2, 0.5, 0.8, 1.2, None):
        request = AgentRequest(prompt="sleep", workdir=str(repo))
        events: list[AgentEvent] = []
        consumer = asyncio.create_task(consume_into(agent, request, events))
        if delay is None:  # after the end
            await asyncio.wait_for(asyncio.shield(consumer), 60)
        else:
            await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(agent.cancel(request.run_id), agent.cancel(request.run_id))
        assert loop.time() - start < 5
        await asyncio.wait_for(consumer, 30)
        result = result_of(events)
        statuses.append(result.status)
        assert live(str(repo)) == []
    assert statuses[0] is RunStatus.CANCELLED
    assert statuses[-1] is RunStatus.SUCCEEDED
    assert set(statuses) <= {RunStatus.CANCELLED, RunStatus.SUCCEEDED}


async def test_idle_timeout_on_a_stalled_stream(
    make_agent: AgentFactory, api: AnthropicServer, repo: Path
) -> None:
    """A stream that stalls after message_start: timed_out after the idle limit, not 300 s."""
    api.script = always(StallMidStream(60))
    events = await collect(
        make_agent(), AgentRequest(prompt="stall", workdir=str(repo), idle_timeout_s=2)
    )
    result = result_of(events)
    assert result.status is RunStatus.TIMED_OUT
    assert "no output for 2 s" in result.text
    assert live(str(repo)) == []


async def test_wall_clock_timeout(
    make_agent: AgentFactory, api: AnthropicServer, repo: Path
) -> None:
    """timeout_s ends a run that is still waiting: timed_out."""
    api.script = always(Hang(60))
    events = await collect(make_agent(), AgentRequest(prompt="x", workdir=str(repo), timeout_s=2))
    result = result_of(events)
    assert result.status is RunStatus.TIMED_OUT
    assert "timed out after 2 s" in result.text


def kubectl_workspace() -> KubernetesWorkspace:
    """A kubernetes workspace whose kubectl is the fake one (the "pod" is this host)."""
    return KubernetesWorkspace(
        pod="web-0",
        namespace="builds",
        kubectl=str(FAKE_KUBECTL),
        kubectl_env={"PATH": os.environ["PATH"]},
    )


@pytest.mark.parametrize("kind", ["local", "kubernetes"])
async def test_a_5mb_tool_result_line(
    make_agent: AgentFactory, api: AnthropicServer, repo: Path, kind: str
) -> None:
    """A Write of 5 MB (a 5 MB tool_use line and a 5 MB tool_result line), read by a slow
    consumer: every event arrives, the big ones cut to the limit."""
    content = "x" * (5 * 1024 * 1024)

    def script(req: ApiRequest) -> Reply:
        if req.tool_results:
            return [text("done")]
        return [write(f"{req.cwd}/big.txt", content)]

    api.script = script
    events = []
    # A consumer slower than the CLI: the CLI (Bun) drops output queued for a full pipe
    # when it exits, so this proves nothing is lost between the CLI and the adapter.
    workspace = kubectl_workspace() if kind == "kubernetes" else LocalWorkspace()
    agent = make_agent(workspace=workspace)
    async for event in agent.execute(AgentRequest(prompt="big", workdir=str(repo))):
        events.append(event)
        await asyncio.sleep(0.3)
    assert result_of(events).status is RunStatus.SUCCEEDED
    assert (repo / "big.txt").stat().st_size == len(content)
    use = next(e.data for e in events if isinstance(e.data, ToolUseData))
    assert len(use.input["content"]) < TOOL_OUTPUT_LIMIT + 100
    assert any(isinstance(e.data, ToolResultData) for e in events)


async def test_child_environment_is_explicit(
    make_agent: AgentFactory, api: AnthropicServer, repo: Path
) -> None:
    """The CLI's env: allow-list + request env + ANTHROPIC_*/CLAUDE_CODE_* + fixed vars only."""
    api.script = bash_then_done("env | sort")
    agent = make_agent(
        environ={
            "PATH": os.environ["PATH"],
            "ANTHROPIC_BASE_URL": api.url,
            "ANTHROPIC_API_KEY": "sk-test",
            "CLAUDE_CODE_EXTRA_FLAG": "on",
            "IS_SANDBOX": "yes",
            "AWS_SECRET_ACCESS_KEY": "must-not-leak",
            "HOME": "/root",
        }
    )
    events = await collect(
        agent,
        AgentRequest(
            prompt="env", workdir=str(repo), env={"GIT_TOKEN": "tok-123"}, state_key="my-proj"
        ),
    )
    assert result_of(events).status is RunStatus.SUCCEEDED
    output = next(e.data.output for e in events if isinstance(e.data, ToolResultData))
    env = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    assert env["IS_SANDBOX"] == "1"
    assert env["GIT_TOKEN"] == "tok-123"
    assert env["CLAUDE_CODE_EXTRA_FLAG"] == "on"
    assert env["ANTHROPIC_BASE_URL"] == api.url
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["DISABLE_AUTOUPDATER"] == "1"
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "0"
    assert env["CLAUDE_CONFIG_DIR"].endswith("/state/my-proj/config")
    assert env["HOME"].endswith("/state/my-proj/home")
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert "must-not-leak" not in output


async def test_capabilities_report_the_real_cli(make_agent: AgentFactory, tmp_path: Path) -> None:
    """capabilities(): available with the version; a missing binary is unavailable, not a crash."""
    caps = await make_agent().capabilities()
    assert caps.available
    assert caps.version == "2.1.197"
    assert caps.resume
    assert caps.streaming
    assert "bypassPermissions" in caps.permission_modes
    missing = await make_agent(binary=str(tmp_path / "nope")).capabilities()
    assert not missing.available
    assert missing.detail
    assert "not found" in missing.detail


async def test_invalid_requests_raise_before_anything_starts(make_agent: AgentFactory) -> None:
    """An empty prompt raises PromptRequiredError at execute(), spawning nothing."""
    with pytest.raises(PromptRequiredError):
        make_agent().execute(AgentRequest(prompt="  ", workdir="/tmp"))


async def test_cancel_before_start_and_a_missing_workdir(
    make_agent: AgentFactory, api: AnthropicServer, tmp_path: Path
) -> None:
    """A run cancelled before it starts ends at once as cancelled; a missing workdir fails."""
    agent = make_agent()
    request = AgentRequest(prompt="x", workdir=str(tmp_path))
    await agent.cancel(request.run_id)
    assert result_of(await collect(agent, request)).status is RunStatus.CANCELLED
    assert api.requests == []
    events = await collect(agent, AgentRequest(prompt="x", workdir=str(tmp_path / "missing")))
    assert result_of(events).status is RunStatus.FAILED
    assert any(isinstance(e.data, ErrorData) and e.data.kind == "spawn_failed" for e in events)


async def test_through_kubectl_exec_and_cancel_in_the_pod(
    make_agent: AgentFactory, api: AnthropicServer, repo: Path
) -> None:
    """Through the kubernetes workspace: a run succeeds, and a cancel during a Bash sleep
    ends every process in the "pod" (killing kubectl alone would leave them)."""
    agent = make_agent(workspace=kubectl_workspace())
    events = await collect(agent, AgentRequest(prompt="create hello.txt", workdir=str(repo)))
    assert result_of(events).status is RunStatus.SUCCEEDED
    assert (repo / "hello.txt").exists()
    assert (await agent.capabilities()).version == "2.1.197"

    seconds = unique_sleep()
    api.script = bash_then_done(f"sleep {seconds}")
    request = AgentRequest(prompt="sleep", workdir=str(repo))
    stream = agent.execute(request)
    seen: list[AgentEvent] = []
    await wait_for_tool_use(stream, seen)
    for _ in range(100):
        if live(f"sleep {seconds}"):
            break
        await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await agent.cancel(request.run_id)
    assert loop.time() - start < 5
    seen += [e async for e in stream]
    assert result_of(seen).status is RunStatus.CANCELLED
    assert live(f"sleep {seconds}") == []
    assert live(str(repo)) == []


class GatedWorkspace(LocalWorkspace):
    """A local workspace whose ensure_dir waits for a gate (a run caught mid-preparation)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.spawned = 0

    async def ensure_dir(self, path: str) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().ensure_dir(path)

    async def spawn(self, *args: Any, **kwargs: Any) -> Any:
        self.spawned += 1
        return await super().spawn(*args, **kwargs)


async def test_cancel_while_the_run_is_being_prepared(
    make_agent: AgentFactory, api: AnthropicServer, repo: Path
) -> None:
    """cancel() between execute() and the CLI's start: cancelled, and the CLI never starts."""
    workspace = GatedWorkspace()
    agent = make_agent(workspace=workspace)
    request = AgentRequest(prompt="x", workdir=str(repo))
    events: list[AgentEvent] = []
    consumer = asyncio.create_task(consume_into(agent, request, events))
    await workspace.entered.wait()
    canceller = asyncio.create_task(agent.cancel(request.run_id))
    await asyncio.sleep(0)
    workspace.gate.set()
    await asyncio.wait_for(asyncio.gather(consumer, canceller), 10)
    assert result_of(events).status is RunStatus.CANCELLED
    assert workspace.spawned == 0
    assert api.requests == []


# --- the fake CLI: only what the real one cannot print --------------------------------------


def fake_agent(make_agent: AgentFactory, tmp_path: Path, mode: str, **kw: Any) -> ClaudeCodeAgent:
    """An agent whose ``claude`` is the fake playing ``mode``."""
    return make_agent(binary=str(fake_claude.install(tmp_path, mode)), **kw)


async def test_garbage_lines_are_skipped(make_agent: AgentFactory, tmp_path: Path) -> None:
    """Non-JSON, truncated JSON and unknown types are skipped; the run still succeeds."""
    events = await collect(
        fake_agent(make_agent, tmp_path, "garbage"),
        AgentRequest(prompt="x", workdir=str(tmp_path)),
    )
    assert [e.type for e in events] == ["init", "message", "result"]
    assert result_of(events).status is RunStatus.SUCCEEDED


async def test_exit_without_result_fails_with_exit_code_and_stderr(
    make_agent: AgentFactory, tmp_path: Path
) -> None:
    """A CLI that dies without a result line: failed, with its exit code and last stderr."""
    for mode, code, words in (
        ("noresult", 3, "fatal: something broke"),
        ("truncated", 2, "broke mid-line"),
    ):
        events = await collect(
            fake_agent(make_agent, tmp_path, mode), AgentRequest(prompt="x", workdir=str(tmp_path))
        )
        result = result_of(events)
        assert result.status is RunStatus.FAILED
        assert f"exited with code {code} without a result" in result.text
        assert words in result.text
        assert result.session_id == fake_claude.SESSION


async def test_a_line_over_the_cap_fails_the_run(make_agent: AgentFactory, tmp_path: Path) -> None:
    """A line over the cap: failed with a clear error, the writer killed, no wedged reader."""
    agent = fake_agent(make_agent, tmp_path, "huge", line_limit=256 * 1024)
    async with asyncio.timeout(15):
        events = await collect(agent, AgentRequest(prompt="x", workdir=str(tmp_path)))
    result = result_of(events)
    assert result.status is RunStatus.FAILED
    assert "longer than the 262144-byte limit" in result.text
    assert any(isinstance(e.data, ErrorData) and e.data.kind == "protocol" for e in events)
    assert live(f"{fake_claude.__file__} huge") == []


async def test_cancel_escalates_to_sigkill_within_5_seconds(
    make_agent: AgentFactory, tmp_path: Path
) -> None:
    """A CLI ignoring SIGINT and SIGTERM is killed; cancel() returns within 5 s."""
    agent = fake_agent(make_agent, tmp_path, "stubborn")
    request = AgentRequest(prompt="x", workdir=str(tmp_path))
    events = agent.execute(request)
    assert (await anext(events)).type == "init"
    loop = asyncio.get_running_loop()
    start = loop.time()
    await agent.cancel(request.run_id)
    assert loop.time() - start < 5
    rest = [e async for e in events]
    assert result_of(rest).status is RunStatus.CANCELLED
    assert live(f"{fake_claude.__file__} stubborn") == []


async def test_argv_and_budget(make_agent: AgentFactory, tmp_path: Path) -> None:
    """The CLI gets the documented flags; a reported cost over max_cost_usd fails the run."""
    record = tmp_path / "record.json"
    events = await collect(
        fake_agent(make_agent, tmp_path, "over-budget"),
        AgentRequest(
            prompt="-starts with a dash",
            workdir=str(tmp_path),
            model="sonnet",
            max_turns=3,
            max_cost_usd=0.25,
            resume_session=fake_claude.SESSION,
            env={"FAKE_CLAUDE_RECORD": str(record)},
        ),
    )
    result = result_of(events)
    assert result.status is RunStatus.FAILED
    assert "budget" in result.text
    assert result.cost_usd == 0.5
    assert any(isinstance(e.data, ErrorData) and e.data.kind == "budget_exceeded" for e in events)
    seen = json.loads(record.read_text())
    assert seen["argv"] == [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "bypassPermissions",
        "--model",
        "sonnet",
        "--max-turns",
        "3",
        "--max-budget-usd",
        "0.250000",
        f"--resume={fake_claude.SESSION}",
        "--",
        "-starts with a dash",
    ]
    assert seen["env"]["IS_SANDBOX"] == "1"


def test_ports_are_satisfied(make_agent: AgentFactory) -> None:
    """ClaudeCodeAgent is a CodeAgent; LocalWorkspace is a Workspace."""
    assert isinstance(make_agent(), CodeAgent)
    assert isinstance(LocalWorkspace(), Workspace)


# --- the command line ------------------------------------------------------------------------


def cli(
    *args: str, api: AnthropicServer, claude_bin: Path, tmp_path: Path
) -> subprocess.Popen[str]:
    """Start ``forgeline agent run`` as a user would."""
    env = {
        "PATH": os.environ["PATH"],
        "ANTHROPIC_BASE_URL": api.url,
        "ANTHROPIC_API_KEY": "sk-test",
        "FORGELINE_CLAUDE_BIN": str(claude_bin),
        "FORGELINE_DATA_DIR": str(tmp_path / "data"),
        "FORGELINE_CLAUDE_MAX_RETRIES": "0",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "forgeline", "agent", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_cli_json_events_and_exit_codes(
    api: AnthropicServer, claude_bin: Path, repo: Path, tmp_path: Path
) -> None:
    """agent run --json: numbered events, exit 0 on success, 1 on failure, 124 on timeout."""
    proc = cli(
        "--prompt", "create hello.txt", "--workdir", str(repo), "--json",
        api=api, claude_bin=claude_bin, tmp_path=tmp_path,
    )  # fmt: skip
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["task_id"] is None for e in events)
    assert events[-1]["type"] == "result"
    assert events[-1]["data"]["status"] == "succeeded"
    session = events[-1]["data"]["session_id"]

    proc = cli(
        "--prompt", "again", "--workdir", str(repo), "--json", "--resume", session,
        api=api, claude_bin=claude_bin, tmp_path=tmp_path,
    )  # fmt: skip
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["data"]["session_id"] == session

    api.script = always(ApiError(401))
    proc = cli(
        "--prompt", "x", "--workdir", str(repo), "--json",
        api=api, claude_bin=claude_bin, tmp_path=tmp_path,
    )  # fmt: skip
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1
    assert json.loads(out.splitlines()[-1])["data"]["status"] == "failed"

    api.script = always(Hang(60))
    proc = cli(
        "--prompt", "x", "--workdir", str(repo), "--json", "--timeout", "2",
        api=api, claude_bin=claude_bin, tmp_path=tmp_path,
    )  # fmt: skip
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 124
    assert json.loads(out.splitlines()[-1])["data"]["status"] == "timed_out"


def test_cli_live_view(api: AnthropicServer, claude_bin: Path, repo: Path, tmp_path: Path) -> None:
    """Without --json: a readable view of the run (tool, answer, verdict), exit 0."""
    proc = cli(
        "--prompt", "create hello.txt", "--workdir", str(repo),
        api=api, claude_bin=claude_bin, tmp_path=tmp_path,
    )  # fmt: skip
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert "Write" in out
    assert f"{repo}/hello.txt" in out
    assert "done" in out
    assert "succeeded" in out
    assert not out.lstrip().startswith("{")


def test_cli_ctrl_c_cancels_cleanly(
    api: AnthropicServer, claude_bin: Path, repo: Path, tmp_path: Path
) -> None:
    """SIGINT to agent run during a Bash sleep: exit 130, a cancelled result, nothing left."""
    seconds = unique_sleep()
    api.script = bash_then_done(f"sleep {seconds}")
    proc = cli(
        "--prompt", "sleep", "--workdir", str(repo), "--json",
        api=api, claude_bin=claude_bin, tmp_path=tmp_path,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if json.loads(line)["type"] == "tool_use":
            break
    for _ in range(100):
        if live(f"sleep {seconds}"):
            break
        subprocess.run(["sleep", "0.05"], check=True)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    events = [json.loads(line) for line in [*lines, *out.splitlines()]]
    assert events[-1]["data"]["status"] == "cancelled"
    assert live(f"sleep {seconds}") == []
    assert live(str(repo)) == []


def test_cli_usage_errors(api: AnthropicServer, claude_bin: Path, tmp_path: Path) -> None:
    """Unknown provider, blank prompt, missing directory: exit 2 with a message."""
    for args, words in (
        (["--provider", "nope", "--prompt", "x", "--workdir", str(tmp_path)], "known providers"),
        (["--prompt", " ", "--workdir", str(tmp_path)], "prompt"),
        (["--prompt", "x", "--workdir", str(tmp_path / "missing")], "not a directory"),
    ):
        proc = cli(*args, api=api, claude_bin=claude_bin, tmp_path=tmp_path)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2
        assert words in err
