"""OpenCode adapter overhead and server memory, against the real ``opencode serve``.

Two measurements, both with the scripted model server of the test suite (it answers at
once, so what is measured is opencode's and forgeline's own cost):

1. **Latency.** Session-to-result time of one scripted run (a ``write`` tool call, then
   text) through ``OpenCodeAgent.execute``, against the same run driven by direct HTTP
   calls on a kept-alive client (create session, subscribe, ``prompt_async``, wait for
   ``session.idle``), alternated on one shared server so both see the same server state. Goal:
   adapter/direct ≤ 1.10.
2. **Memory.** Resident memory (the server and its descendants, peak while running) of one
   shared server running 1, 4 and 8 concurrent sessions, against one server per run.

Run: ``.venv/bin/python -m bench.opencode_overhead [--runs 15] [--sizes 1,4,8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the scripted model server lives in the test support

from tests.support.openai_server import ScriptedOpenAI  # noqa: E402

from forgeline.adapters.agents.opencode import OpenCodeAgent  # noqa: E402
from forgeline.adapters.agents.opencode.server import ManagedServer, SharedServer  # noqa: E402
from forgeline.adapters.workspace.local import LocalWorkspace  # noqa: E402
from forgeline.adapters.workspace.proctree import descendants  # noqa: E402
from forgeline.domain.agent import AgentRequest, RunStatus  # noqa: E402

BINARY = ROOT / "tools" / "node_modules" / "opencode-linux-x64" / "bin" / "opencode"
MODEL = "fake/fake-model"


def make_repo(path: Path) -> Path:
    """A git repository with one commit."""
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(
        ["git", "-C", str(path), "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q",
         "--allow-empty", "-m", "init"],
        check=True,
    )  # fmt: skip
    return path


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, in MB."""
    total = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


async def via_adapter(agent: OpenCodeAgent, repo: Path, n: int) -> float:
    """Seconds from execute() to the result event."""
    req = AgentRequest(
        prompt=f"PATH={repo / f'a{n}.txt'}", workdir=str(repo), provider="opencode", model=MODEL
    )
    started = time.perf_counter()
    status = None
    async for event in agent.execute(req):
        if event.is_result:
            status = event.data.status  # type: ignore[union-attr]
    elapsed = time.perf_counter() - started
    assert status is RunStatus.SUCCEEDED, status
    return elapsed


async def direct(http: httpx.AsyncClient, repo: Path, n: int) -> float:
    """The same run with bare HTTP calls on a kept-alive client: the least any client must
    do (create, subscribe, prompt, wait for idle); the outcome is checked off the clock."""
    params = {"directory": str(repo)}
    started = time.perf_counter()
    sid = (await http.post("/session", params=params, json={"title": "direct"})).json()["id"]
    async with http.stream("GET", "/event", params=params) as stream:
        lines = stream.aiter_lines()
        async for line in lines:
            if line.startswith("data:") and "server.connected" in line:
                break
        body = {
            "parts": [{"type": "text", "text": f"PATH={repo / f'd{n}.txt'}"}],
            "model": {"providerID": "fake", "modelID": "fake-model"},
        }
        await http.post(f"/session/{sid}/prompt_async", params=params, json=body)
        async for line in lines:
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if event["type"] == "session.idle" and event["properties"]["sessionID"] == sid:
                break
    elapsed = time.perf_counter() - started
    messages = (await http.get(f"/session/{sid}/message", params=params)).json()
    assert messages[-1]["info"].get("finish") == "stop"
    return elapsed


@contextlib.asynccontextmanager
async def shared_server(llm: ScriptedOpenAI, state: Path) -> AsyncIterator[OpenCodeAgent]:
    """An adapter with its own managed server, closed at the end."""
    config = json.dumps(llm.opencode_config())
    server = ManagedServer(
        binary=str(BINARY), workspace=LocalWorkspace(), state_dir=state, config_content=config
    )
    agent = OpenCodeAgent(servers=SharedServer(server))
    try:
        yield agent
    finally:
        await agent.aclose()


def server_of(agent: OpenCodeAgent) -> ManagedServer:
    """The adapter's managed server."""
    servers = agent._servers
    assert isinstance(servers, SharedServer)
    assert isinstance(servers.server, ManagedServer)
    return servers.server


async def peak_rss(pids: list[int], work: asyncio.Future[Any]) -> float:
    """Peak summed RSS of ``pids`` (with descendants) while ``work`` runs, in MB."""
    peak = 0.0
    while not work.done():
        peak = max(peak, sum(rss_mb(p) for p in pids))
        await asyncio.sleep(0.05)
    await work
    return max(peak, sum(rss_mb(p) for p in pids))


async def latency(llm: ScriptedOpenAI, tmp: Path, runs: int) -> None:
    """Alternated adapter and direct runs on one server."""
    async with shared_server(llm, tmp / "lat-state") as agent:
        repo = make_repo(tmp / "lat-repo")
        await via_adapter(agent, repo, -1)  # warm-up: server start, first prompt per dir
        address = (await server_of(agent).client()).address
        assert address.password is not None
        auth = ("opencode", address.password.reveal())
        async with httpx.AsyncClient(base_url=address.base_url, auth=auth, timeout=60) as http:
            await direct(http, repo, -1)
            ours: list[float] = []
            bare: list[float] = []
            for n in range(runs):
                # Alternate which goes first, so drift in the server's state hits both alike.
                if n % 2:
                    bare.append(await direct(http, repo, n))
                    ours.append(await via_adapter(agent, repo, n))
                else:
                    ours.append(await via_adapter(agent, repo, n))
                    bare.append(await direct(http, repo, n))
    med_ours, med_bare = statistics.median(ours), statistics.median(bare)
    # Each pair ran back to back, so its ratio is the least disturbed by a busy machine.
    paired = statistics.median(o / b for o, b in zip(ours, bare, strict=True))
    print(f"latency, {runs} alternated runs each (session → result):")
    print(f"  adapter  median {med_ours * 1000:7.1f} ms  (min {min(ours) * 1000:.1f})")
    print(f"  direct   median {med_bare * 1000:7.1f} ms  (min {min(bare) * 1000:.1f})")
    print(
        f"  ratio adapter/direct: medians {med_ours / med_bare:.3f}, minima"
        f" {min(ours) / min(bare):.3f}, median of pairs {paired:.3f}  (goal ≤ 1.10)"
    )


async def memory(llm: ScriptedOpenAI, tmp: Path, sizes: list[int]) -> None:
    """RSS of one shared server with k sessions against k servers with one session each."""
    print("resident memory, peak while running (server + descendants):")
    for k in sizes:
        async with shared_server(llm, tmp / f"mem-shared-{k}") as agent:
            repos = [make_repo(tmp / f"mem-s{k}-{i}") for i in range(k)]
            await server_of(agent).client()
            pid = server_of(agent).pid
            assert pid is not None
            idle = rss_mb(pid)
            work = asyncio.ensure_future(asyncio.gather(*(via_adapter(agent, r, 0) for r in repos)))
            shared_peak = await peak_rss([pid], work)
            shared_after = rss_mb(pid)
        stack = contextlib.AsyncExitStack()
        async with stack:
            agents = [
                await stack.enter_async_context(shared_server(llm, tmp / f"mem-own-{k}-{i}"))
                for i in range(k)
            ]
            await asyncio.gather(*(server_of(a).client() for a in agents))
            pids = [server_of(a).pid for a in agents]
            repos = [make_repo(tmp / f"mem-o{k}-{i}") for i in range(k)]
            work = asyncio.ensure_future(
                asyncio.gather(*(via_adapter(a, r, 0) for a, r in zip(agents, repos, strict=True)))
            )
            own_peak = await peak_rss([p for p in pids if p is not None], work)
            own_after = sum(rss_mb(p) for p in pids if p is not None)
        print(
            f"  {k} session(s): shared server peak {shared_peak:6.0f} MB, after"
            f" {shared_after:5.0f} (idle {idle:.0f}) | one server per run peak {own_peak:6.0f}"
            f" MB, after {own_after:5.0f} | per-run/shared peak {own_peak / shared_peak:.2f}x"
        )


async def main() -> None:
    """Parse arguments, run both measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--sizes", default="1,4,8")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    llm = ScriptedOpenAI().start()
    try:
        with tempfile.TemporaryDirectory(prefix="oc-bench-") as tmp:
            await latency(llm, Path(tmp), args.runs)
            if not args.skip_memory:
                await memory(llm, Path(tmp), [int(s) for s in args.sizes.split(",")])
    finally:
        llm.stop()


if __name__ == "__main__":
    asyncio.run(main())
