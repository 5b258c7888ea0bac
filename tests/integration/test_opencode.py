"""The OpenCode adapter against the real ``opencode serve`` and a scripted model server.

One unsandboxed server process serves most of the module (start-ups are expensive on a
shared 2-core machine): the adapter under test starts it lazily on the first run, every
scenario then runs its own sessions in its own git repository. Scenarios that need a
different path to the server (a cutting proxy, a wrong password) build a second adapter on
the same server. What builds use — a sandboxed server per run, built by the composition
root — has scenarios of its own at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import pytest_asyncio

from forgeline.adapters.agents.opencode import OpenCodeAgent
from forgeline.adapters.agents.opencode import stream as stream_module
from forgeline.adapters.agents.opencode.client import OpenCodeClient
from forgeline.adapters.agents.opencode.events import PartDelta
from forgeline.adapters.agents.opencode.server import ManagedServer, RemoteServer, SharedServer
from forgeline.adapters.workspace.local import LocalWorkspace
from forgeline.bootstrap import build_registry
from forgeline.domain.agent import (
    AgentEvent,
    AgentRequest,
    AgentResult,
    ErrorData,
    MessageData,
    RunStatus,
    StatusData,
    ToolResultData,
    ToolUseData,
)
from forgeline.domain.secrets import Secret
from forgeline.settings import Settings
from tests.conftest import ROOT
from tests.support.openai_server import RecordedRequest, Reply, ScriptedOpenAI, scripted_openai
from tests.support.tcp_proxy import TcpProxy

__all__ = ["scripted_openai"]  # the module-scoped fixture, re-exported for pytest

pytestmark = [pytest.mark.opencode, pytest.mark.asyncio(loop_scope="module")]

MODEL = "fake/fake-model"
T = TypeVar("T")
PLATFORM_BIN = ROOT / "tools" / "node_modules" / "opencode-linux-x64" / "bin" / "opencode"


@pytest.fixture(scope="module")
def oc_binary(opencode_bin: Path) -> str:
    """The platform binary (P17: the npm hard link depends on a postinstall script)."""
    return str(PLATFORM_BIN if PLATFORM_BIN.exists() else opencode_bin)


@pytest.fixture(scope="module")
def oc_config(scripted_openai: ScriptedOpenAI) -> str:
    """OPENCODE_CONFIG_CONTENT naming the scripted server as provider ``fake``."""
    return json.dumps(scripted_openai.opencode_config())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(
    oc_binary: str, oc_config: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ManagedServer]:
    """The module's one ``opencode serve``, ended with its process group at the end."""
    managed = ManagedServer(
        binary=oc_binary,
        workspace=LocalWorkspace(),
        state_dir=tmp_path_factory.mktemp("opencode-state"),
        config_content=oc_config,
    )
    try:
        yield managed
    finally:
        await managed.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent(server: ManagedServer, oc_config: str) -> OpenCodeAgent:
    """The adapter under test, on the shared server (the server fixture ends it)."""
    return OpenCodeAgent(servers=SharedServer(server), config_content=oc_config)


@pytest.fixture
def llm(scripted_openai: ScriptedOpenAI) -> Iterator[ScriptedOpenAI]:
    """The scripted model server, with a clean record and the default script."""
    scripted_openai.reset()
    yield scripted_openai
    scripted_openai.reset()


def make_repo(path: Path) -> Path:
    """A git repository with one commit (opencode keys projects by the root commit)."""
    path.mkdir(parents=True, exist_ok=True)
    who = {"NAME": "t", "EMAIL": "t@t"}
    env = {
        **os.environ,
        **{f"GIT_{role}_{k}": v for role in ("AUTHOR", "COMMITTER") for k, v in who.items()},
    }
    subprocess.run(["git", "init", "-q", str(path)], check=True, env=env)
    (path / "README.md").write_text(f"# {path.name}\n")
    subprocess.run(["git", "-C", str(path), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(path), "commit", "-qm", "init"], check=True, env=env)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh repository for one test."""
    return make_repo(tmp_path / "proj")


def request(prompt: str, workdir: Path, **kw: object) -> AgentRequest:
    """A request to the opencode provider with the scripted model."""
    return AgentRequest(
        prompt=prompt,
        workdir=str(workdir),
        provider="opencode",
        model=MODEL,
        **kw,  # type: ignore[arg-type]
    )


async def collect(
    agent: OpenCodeAgent, req: AgentRequest, limit_s: float = 120.0
) -> list[AgentEvent]:
    """Every event of a run, bounded in time."""
    async with asyncio.timeout(limit_s):
        return [event async for event in agent.execute(req)]


def result_of(events: list[AgentEvent]) -> AgentResult:
    """The one result event, last."""
    results = [e for e in events if e.is_result]
    assert len(results) == 1
    assert events[-1].is_result
    assert isinstance(results[0].data, AgentResult)
    return results[0].data


def of_type(events: list[AgentEvent], kind: type[T]) -> list[T]:
    """The data of the events of one kind."""
    return [e.data for e in events if isinstance(e.data, kind)]


async def wait_until(predicate: Callable[[], bool], limit_s: float = 30.0) -> None:
    """Poll ``predicate`` (for conditions no event announces), bounded."""
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110 - state of other processes, no event to await
            await asyncio.sleep(0.05)


def processes_matching(text: str) -> list[str]:
    """Command lines of live processes containing ``text`` (via ps)."""
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True
    )
    return [line for line in out.stdout.splitlines() if text in line and "ps -ww -eo" not in line]


# --- scenarios ----------------------------------------------------------------------------


async def test_write_tool_then_text(agent: OpenCodeAgent, llm: ScriptedOpenAI, repo: Path) -> None:
    """A write tool call then text: the file exists, events are in order, tokens counted."""
    target = repo / "hello.txt"
    events = await collect(agent, request(f"Create it. PATH={target}", repo))
    result = result_of(events)
    assert result.status is RunStatus.SUCCEEDED, events
    assert target.read_text() == "hello from fake model\n"
    kinds = [e.type for e in events]
    assert kinds[0] == "init"
    assert kinds.index("tool_use") < kinds.index("tool_result") < kinds.index("message")
    (use,) = of_type(events, ToolUseData)
    (answer,) = of_type(events, ToolResultData)
    assert use.name == "write"
    assert use.input["filePath"] == str(target)
    assert answer.id == use.id
    assert not answer.is_error
    assert [m.text for m in of_type(events, MessageData)] == ["done"]
    assert result.text == "done"
    assert result.session_id
    assert result.session_id.startswith("ses_")
    assert {e.session_id for e in events} == {result.session_id}
    assert result.usage.input_tokens == 200
    assert result.usage.output_tokens == 20
    assert result.num_turns == 2
    # A titled session makes no title request: exactly the two model calls of the script.
    assert len(llm.requests) == 2


async def test_follow_up_in_same_session(
    agent: OpenCodeAgent, llm: ScriptedOpenAI, repo: Path
) -> None:
    """resume_session sends a second prompt into the same session, with the history."""
    first = result_of(await collect(agent, request("TEXTONLY hello", repo)))
    assert first.status is RunStatus.SUCCEEDED
    events = await collect(agent, request("TEXTONLY again", repo, resume_session=first.session_id))
    second = result_of(events)
    assert second.status is RunStatus.SUCCEEDED
    assert second.session_id == first.session_id
    # Only the new answer is reported, not the first run's again.
    assert [m.text for m in of_type(events, MessageData)] == ["plain answer from fake model"]
    history = [m.get("role") for m in llm.requests[-1].body["messages"]]
    assert history.count("user") == 2
    assert "assistant" in history


async def test_resume_unknown_session_fails(agent: OpenCodeAgent, repo: Path) -> None:
    """Resuming a session that does not exist ends failed with a clear error."""
    events = await collect(agent, request("TEXTONLY", repo, resume_session="ses_doesnotexist"))
    assert result_of(events).status is RunStatus.FAILED
    (error,) = of_type(events, ErrorData)
    assert error.kind == "session_not_found"


async def test_provider_401_fails_at_once(
    agent: OpenCodeAgent, llm: ScriptedOpenAI, repo: Path
) -> None:
    """A 401 from the provider is not retried: the run fails with the provider's message."""
    started = time.monotonic()
    events = await collect(agent, request("FAIL401 please", repo))
    result = result_of(events)
    assert result.status is RunStatus.FAILED
    errors = of_type(events, ErrorData)
    assert [e.kind for e in errors] == ["APIError"]
    assert "fake 401" in errors[0].message
    assert len(llm.requests) == 1
    assert time.monotonic() - started < 30


async def test_provider_500_retries_then_cancel(
    agent: OpenCodeAgent, llm: ScriptedOpenAI, repo: Path
) -> None:
    """A 500 is retried with status events; cancel() ends the run as cancelled."""
    req = request("FAIL500 please", repo)
    events: list[AgentEvent] = []
    async with asyncio.timeout(60):
        async for event in agent.execute(req):
            events.append(event)
            if isinstance(event.data, StatusData) and event.data.state == "retrying":
                await agent.cancel(req.run_id)
    result = result_of(events)
    assert result.status is RunStatus.CANCELLED
    (retry, *_) = [s for s in of_type(events, StatusData) if s.state == "retrying"]
    assert retry.attempt == 1
    assert "fake 500" in str(retry.detail["message"])
    calls = len(llm.requests)
    await asyncio.sleep(3)  # the next retry would have come ~4.5 s after the first
    assert len(llm.requests) == calls
    client = await agent_client(agent)
    assert result.session_id not in await client.session_status(str(repo))


async def test_cancel_while_streaming(
    agent: OpenCodeAgent, llm: ScriptedOpenAI, repo: Path
) -> None:
    """cancel() during a streamed answer closes the provider stream; the text so far remains."""
    req = request("HANG on", repo)
    client = await agent_client(agent)
    streaming = asyncio.Event()

    async def watch() -> None:
        # A second subscriber: the text deltas show opencode is mid-answer.
        text = ""
        async with client.events(str(repo)) as stream:
            async for event in stream:
                if isinstance(event, PartDelta):
                    text += event.delta
                    if "thinking" in text:
                        streaming.set()
                        return

    watcher = asyncio.create_task(watch(), name="delta-watcher")
    run = asyncio.create_task(collect(agent, req), name="hang-run")
    async with asyncio.timeout(60):
        await streaming.wait()
    disconnects = llm.disconnects
    await agent.cancel(req.run_id)
    events = await run
    await watcher
    result = result_of(events)
    assert result.status is RunStatus.CANCELLED
    assert "thinking" in result.text
    assert [m.text for m in of_type(events, MessageData)] == ["thinking"]
    assert not of_type(events, ErrorData)  # an abort we asked for is not an error
    await wait_until(lambda: llm.disconnects > disconnects, limit_s=10)


async def test_cancel_right_after_the_prompt_is_sent(
    agent: OpenCodeAgent, llm: ScriptedOpenAI, tmp_path: Path
) -> None:
    """cancel() in the gap after prompt_async answered but before the session is busy
    (an abort there is a no-op on the server) still stops the run."""
    repo = make_repo(tmp_path / "fresh")  # a new directory widens the gap (instance boot)
    req = request("HANG on", repo)
    run = asyncio.create_task(collect(agent, req), name="gap-run")
    # White-box: the moment between the 204 and the session turning busy.
    await wait_until(
        lambda: req.run_id in agent._runs and agent._runs[req.run_id].prompt_posted.is_set()
    )
    await agent.cancel(req.run_id)
    result = result_of(await run)
    assert result.status is RunStatus.CANCELLED
    client = await agent_client(agent)
    await asyncio.sleep(1.0)  # had the abort been lost, the run would be busy by now
    assert result.session_id not in await client.session_status(str(repo))


async def test_consumer_aclose_aborts_the_run(
    agent: OpenCodeAgent, llm: ScriptedOpenAI, repo: Path
) -> None:
    """Closing the event iterator mid-run aborts the session before aclose returns."""
    req = request("HANG on", repo)
    stream = agent.execute(req)
    session_id = None
    async with asyncio.timeout(60):
        async for event in stream:
            session_id = event.session_id
            if isinstance(event.data, StatusData) and event.data.state == "requesting":
                break
    await wait_until(lambda: len(llm.requests) >= 1)
    await stream.aclose()
    client = await agent_client(agent)
    assert session_id not in await client.session_status(str(repo))


async def test_cancel_during_bash_leaves_no_process(
    agent: OpenCodeAgent, llm: ScriptedOpenAI, repo: Path
) -> None:
    """Aborting while the bash tool runs `sleep` kills it: no process left, no marker."""
    marker = repo / "slept.txt"
    seconds = "47.25"
    req = request(f"BASHSLEEP={seconds}:{marker}", repo)
    events: list[AgentEvent] = []
    async with asyncio.timeout(90):
        async for event in agent.execute(req):
            events.append(event)
            if isinstance(event.data, ToolUseData) and event.data.name == "bash":
                await wait_until(lambda: bool(processes_matching(f"sleep {seconds}")))
                await agent.cancel(req.run_id)
                # cancel() returned: the session is idle, opencode has killed the tool.
                assert processes_matching(f"sleep {seconds}") == []
    result = result_of(events)
    assert result.status is RunStatus.CANCELLED
    assert processes_matching(f"sleep {seconds}") == []
    assert not marker.exists()
    (use,) = of_type(events, ToolUseData)
    assert [r.id for r in of_type(events, ToolResultData)] == [use.id]


async def test_stream_cut_mid_run(server: ManagedServer, llm: ScriptedOpenAI, repo: Path) -> None:
    """The SSE stream dies mid-run: the run reconnects, re-syncs, ends right, no duplicates."""
    address = (await server.client()).address
    port = int(address.base_url.rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    via_proxy = OpenCodeAgent(servers=SharedServer(RemoteServer(proxy.url, address.password)))

    def cut_before_answering(req: RecordedRequest) -> Reply:
        if req.last_role == "tool":
            # The stream dies while the model answers; reconnects fail for a while, so the
            # run's end (text, step-finish, idle) happens while nobody listens.
            proxy.cut(refuse_s=1.0)
            return Reply(text="done after the cut")
        return Reply(tool="write", arguments={"filePath": str(repo / "cut.txt"), "content": "x\n"})

    llm.script = cut_before_answering
    try:
        events = await collect(via_proxy, request("write then answer", repo), limit_s=90)
    finally:
        await via_proxy.aclose()
        proxy.stop()
    result = result_of(events)
    assert result.status is RunStatus.SUCCEEDED, events
    assert proxy.cuts >= 1
    assert proxy.refused >= 1  # the stream was down while the run ended: found by re-sync
    assert [m.text for m in of_type(events, MessageData)] == ["done after the cut"]
    assert len(of_type(events, ToolUseData)) == 1
    assert len(of_type(events, ToolResultData)) == 1
    assert result.usage.input_tokens == 200  # each step counted once
    assert (repo / "cut.txt").exists()


async def test_password_required_and_wrong_password_refused(
    server: ManagedServer, repo: Path
) -> None:
    """The server refuses calls without or with a wrong password; the adapter says so."""
    address = (await server.client()).address
    async with httpx.AsyncClient(base_url=address.base_url) as raw:
        assert (await raw.get("/global/health")).status_code == 401
        wrong = await raw.get("/global/health", auth=("opencode", "not-the-password"))
        assert wrong.status_code == 401
    intruder = OpenCodeAgent(
        servers=SharedServer(RemoteServer(address.base_url, Secret("not-the-password")))
    )
    try:
        caps = await intruder.capabilities()
        assert not caps.available
        assert caps.detail
        assert "401" in caps.detail
        events = await collect(intruder, request("TEXTONLY", repo))
    finally:
        await intruder.aclose()
    assert result_of(events).status is RunStatus.FAILED
    (error,) = of_type(events, ErrorData)
    assert "authentication refused" in error.message
    assert address.password is not None
    assert address.password.reveal() not in json.dumps([e.to_dict() for e in events])


async def test_two_directories_at_once(
    agent: OpenCodeAgent, llm: ScriptedOpenAI, tmp_path: Path
) -> None:
    """Two runs in different directories at the same time on one server stay apart."""
    first, second = make_repo(tmp_path / "one"), make_repo(tmp_path / "two")
    runs = await asyncio.gather(
        collect(agent, request(f"PATH={first / 'a.txt'}", first)),
        collect(agent, request(f"PATH={second / 'b.txt'}", second)),
    )
    for events, directory, name in zip(runs, (first, second), ("a.txt", "b.txt"), strict=True):
        assert result_of(events).status is RunStatus.SUCCEEDED
        (use,) = of_type(events, ToolUseData)
        assert use.input["filePath"] == str(directory / name)
        assert (directory / name).exists()
    assert result_of(runs[0]).session_id != result_of(runs[1]).session_id


async def test_cancel_before_and_after(
    agent: OpenCodeAgent, llm: ScriptedOpenAI, repo: Path
) -> None:
    """cancel() before execute ends the run at once; after the end it is a no-op."""
    early = request("TEXTONLY", repo)
    await agent.cancel(early.run_id)
    events = await collect(agent, early)
    assert [e.type for e in events] == ["result"]
    assert result_of(events).status is RunStatus.CANCELLED
    assert llm.requests == []
    late = request("TEXTONLY", repo)
    assert result_of(await collect(agent, late)).status is RunStatus.SUCCEEDED
    await agent.cancel(late.run_id)
    await agent.cancel(late.run_id)
    await agent.cancel("never-heard-of")


async def test_wall_clock_timeout(agent: OpenCodeAgent, llm: ScriptedOpenAI, repo: Path) -> None:
    """A run past its wall-clock limit is aborted and ends timed_out."""
    events = await collect(agent, request("HANG on", repo, timeout_s=3.0), limit_s=60)
    result = result_of(events)
    assert result.status is RunStatus.TIMED_OUT
    assert [e.kind for e in of_type(events, ErrorData)] == ["timeout"]
    client = await agent_client(agent)
    assert result.session_id not in await client.session_status(str(repo))


async def test_idle_timeout(agent: OpenCodeAgent, llm: ScriptedOpenAI, repo: Path) -> None:
    """A run whose agent goes silent (the model stream hangs) ends timed_out after the
    idle limit, and is aborted."""
    events = await collect(agent, request("HANG on", repo, idle_timeout_s=2.0), limit_s=60)
    result = result_of(events)
    assert result.status is RunStatus.TIMED_OUT
    assert [e.kind for e in of_type(events, ErrorData)] == ["idle_timeout"]
    client = await agent_client(agent)
    assert result.session_id not in await client.session_status(str(repo))


async def test_max_turns_stops_the_next_model_call(
    agent: OpenCodeAgent, llm: ScriptedOpenAI, repo: Path
) -> None:
    """max_turns=1: the tool step runs, the second model call is stopped, the run fails.

    (The scripted model answers within milliseconds, so the second call's text may still
    arrive before the abort lands; the run ends failed either way.)"""
    target = repo / "limited.txt"
    events = await collect(agent, request(f"PATH={target}", repo, max_turns=1))
    result = result_of(events)
    assert result.status is RunStatus.FAILED
    assert [e.kind for e in of_type(events, ErrorData)] == ["limit"]
    assert target.exists()
    client = await agent_client(agent)
    assert result.session_id not in await client.session_status(str(repo))


async def test_server_crash_fails_the_run_and_next_run_restarts_it(
    agent: OpenCodeAgent,
    server: ManagedServer,
    llm: ScriptedOpenAI,
    repo: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server dies mid-run: the run ends failed (one result); the next run starts a
    new server and succeeds."""
    monkeypatch.setattr(stream_module, "RECONNECT_DELAYS_S", (0.05, 0.1, 0.2))
    req = request("HANG on", repo)
    run = asyncio.create_task(collect(agent, req), name="crash-run")
    await wait_until(lambda: len(llm.requests) >= 1)
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    events = await run
    assert result_of(events).status is RunStatus.FAILED
    assert of_type(events, ErrorData)
    again = await collect(agent, request("TEXTONLY", repo))
    assert result_of(again).status is RunStatus.SUCCEEDED
    assert server.pid not in (None, pid)


async def test_capabilities(agent: OpenCodeAgent) -> None:
    """A running server reports itself healthy, with its version and configured models."""
    caps = await agent.capabilities()
    assert caps.available
    assert caps.version == "1.18.33"
    assert caps.models == (MODEL,)
    assert caps.resume
    assert caps.streaming


@pytest.mark.slow
async def test_through_the_registry(
    oc_binary: str, oc_config: str, llm: ScriptedOpenAI, repo: Path, tmp_path: Path
) -> None:
    """Built from settings by the composition root, each run gets a sandboxed server of its
    own: it runs (granting the permission its configuration asks for) and writes the run's
    checkout, and when the run ends no process of its server is left."""
    config = tmp_path / "opencode.json"
    # This server's configuration makes bash ask first: the unattended run must answer.
    config.write_text(json.dumps({**json.loads(oc_config), "permission": {"bash": "ask"}}))
    data = tmp_path / "data"
    settings = Settings(data_dir=data, opencode_bin=oc_binary, opencode_config=config)
    registry = build_registry(settings)
    assert registry.names()[0] == "claude-code"
    agent = registry.get("opencode")
    assert isinstance(agent, OpenCodeAgent)
    try:
        caps = await agent.capabilities()  # nothing started for a probe: the binary answers
        assert caps.available
        assert caps.version == "1.18.33"
        assert caps.models == (MODEL,)
        # Even --version writes state (P14): it went to the probe's own HOME.
        assert (data / "agents" / "opencode" / "probe" / "home" / ".local" / "share").is_dir()
        marker = repo / "asked.txt"
        req = request(f"BASHSLEEP=0.1:{marker}", repo)
        run = asyncio.create_task(collect(agent, req))
        await wait_until(lambda: bool(processes_matching(f"{data}/agents/opencode/")))
        events = await run
        assert result_of(events).status is RunStatus.SUCCEEDED
        granted = [s for s in of_type(events, StatusData) if s.state == "permission_granted"]
        assert [s.detail["permission"] for s in granted] == ["bash"]
        assert marker.read_text() == "slept\n"
        # The session lives in the project's own state, beside its server's HOME.
        assert (data / "agents" / "opencode" / req.state_name() / "home").is_dir()
        assert processes_matching(f"{data}/agents/opencode/") == []
    finally:
        await agent.aclose()


async def agent_client(agent: OpenCodeAgent) -> OpenCodeClient:
    """The adapter's client of its server (started if need be)."""
    servers = agent._servers
    assert isinstance(servers, SharedServer)
    return await servers.server.client()
