"""The native Codex, Gemini CLI and Qwen Code adapters against the real CLIs and scripted
model servers on 127.0.0.1.

Every scenario runs each pinned CLI (``tools/node_modules/.bin/<cli>``) pointed, through
the CLI's own variables in forgeline's environment, at the scripted server of its wire API:
:mod:`tests.support.responses_server` (Codex), :mod:`tests.support.gemini_server` (Gemini)
and :mod:`tests.support.openai_server` (Qwen, chat completions). Each server follows the
same prompt keywords (``FAIL401``, ``FAIL500``, ``HANG``, ``PERLSLEEP=<s>``, else a tool
call writing ``hello.txt``; ``ack: <prompt>`` on a resumed conversation). "No process
left" is checked with ``ps``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from forgeline.adapters.agents.codex import CodexAgent
from forgeline.adapters.agents.gemini import GeminiAgent
from forgeline.adapters.agents.jsonl import JsonLinesAgent
from forgeline.adapters.agents.qwen import QwenAgent
from forgeline.adapters.workspace.local import LocalWorkspace
from forgeline.adapters.workspace.sandbox import BubblewrapWorkspace
from forgeline.domain.agent import (
    AgentEvent,
    AgentRequest,
    CostSource,
    ErrorData,
    RunStatus,
    ToolUseData,
)
from forgeline.domain.pricing import Price, PriceTable
from tests.conftest import TOOLS_BIN
from tests.support.agent_runs import collect, live, result_of
from tests.support.gemini_server import GeminiServer
from tests.support.openai_server import ScriptedOpenAI, qwen_script
from tests.support.responses_server import ResponsesServer

MODEL = "fake-model"
PRICES = PriceTable({MODEL: Price(input=1.0, output=2.0, cached=0.5)})
PROVIDERS = ["codex", "gemini", "qwen"]


@dataclass
class Harness:
    """One provider under test: its agent factory and what its model server saw."""

    name: str
    make: Callable[..., JsonLinesAgent]
    #: The conversation of the newest model request, as JSON text.
    last_conversation: Callable[[], str]
    #: How many model requests the server answered so far.
    model_requests: Callable[[], int]


def _binary(name: str) -> str:
    path = TOOLS_BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed at {path}; run scripts/setup-tools", pytrace=False)
    return str(path)


def _factory(
    agent_class: type[JsonLinesAgent], tmp_path: Path, environ: dict[str, str]
) -> Callable[..., JsonLinesAgent]:
    """Agents of ``agent_class`` on the pinned CLI, talking to the server named in
    ``environ``, with retries off and the test price table."""

    def make(**overrides: Any) -> JsonLinesAgent:
        options: dict[str, Any] = {
            "workspace": LocalWorkspace(),
            "state_dir": str(tmp_path / "state"),
            "binary": _binary(agent_class.label),
            "environ": {"PATH": "/usr/local/bin:/usr/bin:/bin", **environ},
            "max_retries": 0,
            "prices": PRICES,
        }
        return agent_class(**(options | overrides))

    return make


def _codex(stack: ExitStack, tmp_path: Path) -> Harness:
    api = stack.enter_context(ResponsesServer())
    environ = {"OPENAI_BASE_URL": api.base_url, "OPENAI_API_KEY": "sk-test"}
    return Harness(
        "codex",
        _factory(CodexAgent, tmp_path, environ),
        lambda: json.dumps(api.requests[-1].items),
        lambda: len(api.requests),
    )


def _gemini(stack: ExitStack, tmp_path: Path) -> Harness:
    api = stack.enter_context(GeminiServer())
    environ = {"GOOGLE_GEMINI_BASE_URL": api.base_url, "GEMINI_API_KEY": "test-key"}
    return Harness(
        "gemini",
        _factory(GeminiAgent, tmp_path, environ),
        lambda: json.dumps(api.main_requests[-1].contents),
        lambda: len(api.main_requests),
    )


def _qwen(stack: ExitStack, tmp_path: Path) -> Harness:
    api = ScriptedOpenAI().start()
    stack.callback(api.stop)
    api.script = qwen_script
    environ = {"OPENAI_BASE_URL": api.base_url, "OPENAI_API_KEY": "sk-test"}

    def main() -> list[Any]:
        return [r for r in api.requests if r.body.get("tools")]

    return Harness(
        "qwen",
        _factory(QwenAgent, tmp_path, environ),
        lambda: json.dumps(main()[-1].body.get("messages")),
        lambda: len(api.requests),
    )


@pytest.fixture(params=PROVIDERS)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Each provider in turn, with a fresh scripted server."""
    builders = {"codex": _codex, "gemini": _gemini, "qwen": _qwen}
    with ExitStack() as stack:
        yield builders[request.param](stack, tmp_path)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh git repository as the agent's working directory."""
    path = tmp_path / "repo"
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def request(repo: Path, prompt: str, **fields: Any) -> AgentRequest:
    """A request in ``repo`` for the scripted model."""
    return AgentRequest(prompt=prompt, workdir=str(repo), model=MODEL, **fields)


async def test_tool_call_writes_a_file_in_the_sandbox(harness: Harness, repo: Path) -> None:
    """In the bubblewrap sandbox: the model's tool call writes hello.txt, the run succeeds
    with a session, token usage and a cost estimated from the price table."""
    agent = harness.make(workspace=BubblewrapWorkspace())
    events = await collect(agent, request(repo, "create hello.txt", state_key="proj"))
    result = result_of(events)
    assert result.status is RunStatus.SUCCEEDED, result.text
    assert (repo / "hello.txt").read_text() == "hello from the fake API\n"
    types = [e.type for e in events]
    assert types[0] == "init"
    assert "tool_use" in types
    assert "tool_result" in types
    assert result.text == "done"
    assert result.session_id
    assert all(e.session_id in (None, result.session_id) for e in events)
    assert result.usage.input_tokens + result.usage.cache_read_tokens > 0
    assert result.usage.output_tokens > 0
    assert result.cost_source is CostSource.ESTIMATED
    assert result.cost_usd == pytest.approx(PRICES.estimate(MODEL, result.usage))
    assert not any(isinstance(e.data, ErrorData) for e in events)


async def test_resume_keeps_the_session_and_counts_only_its_own_usage(
    harness: Harness, repo: Path
) -> None:
    """A resumed run keeps the session id, the model sees the earlier turn, and its usage
    is its own (the CLIs report totals over the session)."""
    agent = harness.make()
    first = result_of(await collect(agent, request(repo, "create hello.txt", state_key="p")))
    assert first.status is RunStatus.SUCCEEDED, first.text
    before = harness.model_requests()
    second = result_of(
        await collect(
            agent,
            request(repo, "what did you do?", state_key="p", resume_session=first.session_id),
        )
    )
    assert second.status is RunStatus.SUCCEEDED, second.text
    assert second.session_id == first.session_id
    assert second.text == "ack: what did you do?"
    assert "hello.txt" in harness.last_conversation()
    # Each scripted answer is 10 output tokens: the run counts its own requests only.
    assert second.usage.output_tokens == 10 * (harness.model_requests() - before)
    assert first.usage.output_tokens == 10 * before


async def test_resume_from_another_checkout_in_the_sandbox(
    harness: Harness, tmp_path: Path
) -> None:
    """Each attempt of a build has a checkout of its own: a session recorded in one is
    resumed from another of the same project, in the sandbox."""
    agent = harness.make(workspace=BubblewrapWorkspace())
    first_dir, second_dir = tmp_path / "proj" / "task.1", tmp_path / "proj" / "task.2"
    for path in (first_dir, second_dir):
        path.mkdir(parents=True)
        await asyncio.to_thread(subprocess.run, ["git", "init", "-q", str(path)], check=True)
    first = result_of(await collect(agent, request(first_dir, "create hello.txt", state_key="p")))
    assert first.status is RunStatus.SUCCEEDED, first.text
    second = result_of(
        await collect(
            agent,
            request(second_dir, "what did you do?", state_key="p", resume_session=first.session_id),
        )
    )
    assert second.status is RunStatus.SUCCEEDED, second.text
    assert second.session_id == first.session_id
    assert second.text == "ack: what did you do?"


@pytest.mark.parametrize(("keyword", "reason"), [("FAIL401", "401"), ("FAIL500", "")])
async def test_model_api_errors_fail_with_the_message(
    harness: Harness, repo: Path, keyword: str, reason: str
) -> None:
    """A 401 or a 500 from the model API: failed (with retries off, at once), the message
    in the result and in an error event."""
    events = await collect(harness.make(), request(repo, f"{keyword} please"))
    result = result_of(events)
    assert result.status is RunStatus.FAILED
    assert result.text
    assert reason in result.text
    errors = [e.data for e in events if isinstance(e.data, ErrorData)]
    assert errors
    assert reason in errors[-1].message


async def test_cancel_during_a_long_tool_command_leaves_no_process(
    harness: Harness, repo: Path
) -> None:
    """cancel() while the model's shell command runs: cancelled, bounded, and ps shows no
    process of the run."""
    seconds = f"{40 + uuid.uuid4().int % 50}.{uuid.uuid4().int % 10**6:06d}"
    agent = harness.make()
    run = request(repo, f"PERLSLEEP={seconds}")
    events = agent.execute(run)
    seen: list[AgentEvent] = []
    async for event in events:
        seen.append(event)
        if isinstance(event.data, ToolUseData):
            break
    async with asyncio.timeout(30):
        while not live(f"sleep {seconds}"):  # noqa: ASYNC110 - polling ps
            await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await agent.cancel(run.run_id)
    assert loop.time() - start < 5
    seen += [e async for e in events]
    assert result_of(seen).status is RunStatus.CANCELLED
    assert live(f"sleep {seconds}") == []
    assert live(str(repo)) == []
    assert not (repo / "slept.txt").exists()
    await agent.cancel(run.run_id)  # after the end: a no-op


async def test_a_stalled_model_times_out(harness: Harness, repo: Path) -> None:
    """The model stalls mid-answer: the run ends timed_out at its wall-clock limit, with no
    process left."""
    events = await collect(harness.make(), request(repo, "HANG now", timeout_s=3))
    result = result_of(events)
    assert result.status is RunStatus.TIMED_OUT
    assert "3 s" in result.text
    assert live(str(repo)) == []


async def test_budget_ends_a_run_that_costs_more(harness: Harness, repo: Path) -> None:
    """max_cost_usd holds for a CLI that reports no dollars: the estimate passes a tiny
    budget and the run fails, saying so."""
    events = await collect(harness.make(), request(repo, "create hello.txt", max_cost_usd=1e-9))
    result = result_of(events)
    assert result.status is RunStatus.FAILED
    assert "budget" in result.text
    assert any(isinstance(e.data, ErrorData) and e.data.kind == "budget_exceeded" for e in events)


async def test_capabilities_find_the_pinned_cli(harness: Harness) -> None:
    """The availability check runs the CLI and reports its version and honest capabilities.
    (``gemini --version`` loads its whole bundle, 3-5 s on a loaded 2-core machine: past the
    availability bound it is reported unavailable, saying so, which is the contract too.)"""
    caps = await harness.make().capabilities()
    if caps.available:
        assert caps.version
        assert caps.version[0].isdigit()
    else:
        assert harness.name == "gemini"
        assert "did not finish" in (caps.detail or ""), caps.detail
    assert caps.resume
    assert caps.cost is CostSource.ESTIMATED
    missing = await harness.make(binary="/nonexistent/cli").capabilities()
    assert not missing.available


async def test_a_builds_credentials_supply_the_endpoint(harness: Harness, repo: Path) -> None:
    """With nothing in forgeline's environment, the request's variables (a build's
    credentials) carry the CLI's endpoint and key: the run reaches the model."""
    agent = harness.make()
    endpoint = {k: v for k, v in agent._environ.items() if k != "PATH"}
    bare = harness.make(environ={"PATH": "/usr/local/bin:/usr/bin:/bin"})
    result = result_of(await collect(bare, request(repo, "create hello.txt", env=endpoint)))
    assert result.status is RunStatus.SUCCEEDED, result.text
    assert (repo / "hello.txt").exists()


FAKE_CLI = """#!/usr/bin/env python3
import sys, time
print('{"type": "thread.started", "thread_id": "t", "session_id": "t"}', flush=True)
print("garbage that is not json", flush=True)
print("x" * 4_000_000, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("agent_class", [CodexAgent, GeminiAgent, QwenAgent])
async def test_an_oversized_line_fails_the_run_and_leaves_no_process(
    agent_class: type[JsonLinesAgent], tmp_path: Path, repo: Path
) -> None:
    """A CLI printing a garbled line and then one over the line limit: the garbled one is
    skipped, the oversized one ends the run failed with a protocol error, nothing left."""
    fake = tmp_path / f"fake-{agent_class.label}"
    fake.write_text(FAKE_CLI)
    fake.chmod(0o755)
    agent = agent_class(
        workspace=LocalWorkspace(),
        state_dir=str(tmp_path / "state"),
        binary=str(fake),
        environ={"PATH": "/usr/local/bin:/usr/bin:/bin"},
        line_limit=64 * 1024,
    )
    events = await collect(agent, request(repo, "hi"))
    result = result_of(events)
    assert result.status is RunStatus.FAILED
    assert "longer than the 65536-byte limit" in result.text
    assert any(isinstance(e.data, ErrorData) and e.data.kind == "protocol" for e in events)
    assert live(str(fake)) == []
