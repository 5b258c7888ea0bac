"""Build orchestration benchmark: latency, throughput, overhead over bare ``claude``, memory.

Run from the repository root::

    .venv/bin/python -m bench.builds [--quick] [--json] [--dsn URL]

Three measurements, each through forgeline's real HTTP API (uvicorn on 127.0.0.1 in this
process, as ``forgeline serve`` wires it) with real git and embedded bare repositories:

1. **Scripted agent, SQLite and PostgreSQL.** The agent is :class:`ScriptedAgent` (no
   model, no subprocess: init, a Write tool_use, the file written, tool_result, result),
   registered as ``claude-code``. *POST-to-agent-start latency*: one build at a time, from
   sending ``POST /project/{name}/build`` to the worker entering the agent's ``execute``
   (so it includes the queue round trip, the claim and the checkout). *Builds per second*:
   a batch spread over several projects submitted at once, until every task is final.
2. **Orchestration overhead.** A build through forgeline with the pinned ``claude`` CLI
   against the suite's scripted Anthropic server (the hello.txt conversation), from the
   POST to the ``result`` event on the task's SSE stream, against the bare
   ``claude -p "create hello.txt" --output-format stream-json --verbose
   --dangerously-skip-permissions`` of the same conversation (fresh git repository as cwd,
   fresh HOME), alternated, medians. Each forgeline round builds a fresh project (a
   clone, a fresh agent HOME), as each bare round starts fresh; one untimed run of each
   comes first. The per-step medians (checkout, agent, commit, push) show where the
   difference goes.
3. **20 builds of 20 projects at once on one worker process** (``python -m
   bench._scripted_agent``, concurrency 20, PostgreSQL; the API runs here with no worker):
   all completed?, wall time, the worker's RSS before and at its peak during the batch, and
   its ``ru_maxrss``. The scripted agent "thinks" 1 s here so that the 20 runs overlap
   (the table says how many ran at once); the projects are new, so every checkout is a
   clone.

PostgreSQL: a fresh database on ``FORGELINE_TEST_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``) for each measurement, dropped afterwards;
``--dsn`` uses the given database as is instead. Progress goes to stderr; stdout gets the
table (or, with ``--json``, one JSON document).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn
from tests.support.anthropic_server import AnthropicServer, hello_script

from forgeline.bootstrap import Container, open_container
from forgeline.domain.task import TaskStatus
from forgeline.entrypoints.api.app import create_app
from forgeline.logs import Redactor, configure_logging
from forgeline.services.registry import ProviderRegistry
from forgeline.settings import Settings
from forgeline.testing import ScriptedAgent

ROOT = Path(__file__).resolve().parents[1]
CLAUDE_BIN = ROOT / "tools" / "node_modules" / ".bin" / "claude"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
PROMPT = "create hello.txt"
FINAL = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    latency_samples: int
    batch_projects: int
    batch_per_project: int
    workers: int
    overhead_rounds: int
    scale_builds: int
    scale_hold_s: float


QUICK = Sizes(
    latency_samples=15,
    batch_projects=4,
    batch_per_project=5,
    workers=4,
    overhead_rounds=3,
    scale_builds=20,
    scale_hold_s=1.0,
)
FULL = Sizes(
    latency_samples=100,
    batch_projects=8,
    batch_per_project=12,
    workers=4,
    overhead_rounds=15,
    scale_builds=20,
    scale_hold_s=1.0,
)


def progress(message: str) -> None:
    """A progress line on stderr (stdout is the result)."""
    print(f"[bench.builds {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (p99 of fewer than 100 samples is their maximum)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# --- infrastructure -----------------------------------------------------------------------


@contextmanager
def postgres_database(dsn: str | None) -> Iterator[str]:
    """``dsn`` as is, or a fresh database on the test server, dropped afterwards."""
    if dsn:
        yield dsn
        return
    server = os.environ.get("FORGELINE_TEST_PG_URL", DEFAULT_PG)
    name = f"forgeline_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'create database "{name}"')
    try:
        yield f"{server.rpartition('/')[0]}/{name}"
    finally:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def bench_settings(data_dir: Path, database_url: str = "", **overrides: Any) -> Settings:
    """Settings of a benchmark server: its own data dir, quiet logs, no per-project cap."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "log_level": "error",
        "max_queued_per_project": 10_000,
        "shutdown_grace_s": 10.0,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Served:
    """A running forgeline API and an authenticated client of it."""

    url: str
    client: httpx.AsyncClient
    container: Container
    #: SSE streams that ended before their task's ``result`` event (see :meth:`events`).
    early_ends: int = 0

    async def create_project(self, name: str) -> None:
        """``POST /projects`` (embedded bare repository, empty initial commit)."""
        response = await self.client.post("/projects", json={"name": name})
        if response.status_code != 201:
            raise RuntimeError(f"project {name}: {response.status_code} {response.text}")

    async def build(self, project: str, prompt: str = PROMPT) -> str:
        """``POST /project/{name}/build``; the task id."""
        response = await self.client.post(f"/project/{project}/build", json={"prompt": prompt})
        if response.status_code != 202:
            raise RuntimeError(f"build {project}: {response.status_code} {response.text}")
        task_id: str = response.json()["task_id"]
        return task_id

    async def wait_final(self, task_id: str, timeout_s: float = 60.0) -> TaskStatus:
        """Poll the queue (not the API, to leave the server alone) until the task is final."""
        async with asyncio.timeout(timeout_s):
            while True:
                task = await self.container.queue.get(task_id)
                if task.status in FINAL:
                    return task.status
                await asyncio.sleep(0.01)

    async def step_ms(self, task_id: str, step: str) -> float:
        """How long a pipeline step of a task took, from its ``status`` event."""
        for stored in await self.container.store.list_events(task_id, after_seq=0, limit=1000):
            data = stored.to_dict()["data"]
            if data.get("state") == "step" and data.get("step") == step and "duration_ms" in data:
                return float(data["duration_ms"])
        raise RuntimeError(f"task {task_id} has no finished {step} step")

    async def final_count(self) -> int:
        """How many tasks are final (completed, failed or cancelled)."""
        counts = [await self.container.queue.count(status=status) for status in FINAL]
        return sum(counts)

    async def events(self, task_id: str) -> list[dict[str, Any]]:
        """The task's SSE stream, read to its ``result``. A stream that ends before the
        result is resumed from ``Last-Event-ID``, as a client would, and counted in
        :attr:`early_ends`: the server can see the task final a moment before the worker
        has stored its result event, and then ends the stream too early."""
        events: list[dict[str, Any]] = []
        for _ in range(50):
            headers = {"Last-Event-ID": str(events[-1]["seq"])} if events else {}
            async with self.client.stream(
                "GET", f"/tasks/{task_id}/events", headers=headers
            ) as response:
                response.raise_for_status()
                events += [
                    json.loads(line[6:])
                    async for line in response.aiter_lines()
                    if line.startswith("data: ")
                ]
            if events and events[-1]["type"] == "result":
                break
            self.early_ends += 1
            await asyncio.sleep(0.01)
        return events

    async def wait_finished(self, before: int, count: int, timeout_s: float = 300.0) -> None:
        """Until ``count`` more tasks than ``before`` are final. Polled: in measurement 3
        the builds finish in another process, and the database is what both share."""
        async with asyncio.timeout(timeout_s):
            while await self.final_count() - before < count:  # noqa: ASYNC110 - see above
                await asyncio.sleep(0.02)


@asynccontextmanager
async def serving(
    settings: Settings, *, workers: int, agent: ScriptedAgent | None = None
) -> AsyncIterator[Served]:
    """forgeline's API with ``workers`` in-process build slots on 127.0.0.1 until the block
    ends; ``agent`` replaces the ``claude-code`` provider when given."""
    redactor = Redactor()
    registry = None
    if agent is not None:
        registry = ProviderRegistry()
        registry.register(agent)
    async with open_container(settings, redactor=redactor, registry=registry) as container:
        app = create_app(settings, container=container, workers=workers, redactor=redactor)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_config=None, lifespan="on", access_log=False, log_level="error"
        )
        server = uvicorn.Server(config)
        serve = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
        try:
            async with asyncio.timeout(60):
                while not server.started:
                    if serve.done():
                        serve.result()
                        raise RuntimeError("uvicorn stopped before it started")
                    await asyncio.sleep(0.02)
            # Its own token (as `forgeline token create`): the admin token file is only
            # written when the database has no token yet, which --dsn does not promise.
            token = (await container.auth.create(f"bench-{uuid.uuid4().hex[:8]}")).value
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(
                base_url=url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=httpx.Timeout(60.0),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            ) as client:
                yield Served(url=url, client=client, container=container)
        finally:
            server.should_exit = True
            await asyncio.wait_for(serve, 60)
            sock.close()


@contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block (forgeline reads its agents' gateway from
    its own environment, as an operator's ``ANTHROPIC_BASE_URL`` would be)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


# --- 1. scripted agent: latency and throughput ----------------------------------------------


@dataclass
class ScriptedFigures:
    """Figures of measurement 1 on one database."""

    database: str
    samples: int
    accept_ms: list[float] = field(default_factory=list)
    start_ms: list[float] = field(default_factory=list)
    checkout_ms: list[float] = field(default_factory=list)
    batch_builds: int = 0
    batch_projects: int = 0
    batch_completed: int = 0
    batch_s: float = 0.0

    @property
    def builds_per_s(self) -> float:
        """Completed builds per second of the batch."""
        return self.batch_completed / self.batch_s if self.batch_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of these figures."""
        return {
            "database": self.database,
            "latency_samples": self.samples,
            "post_to_202_ms": {"p50": pct(self.accept_ms, 0.5), "p99": pct(self.accept_ms, 0.99)},
            "post_to_agent_start_ms": {
                "p50": pct(self.start_ms, 0.5),
                "p99": pct(self.start_ms, 0.99),
                "mean": statistics.fmean(self.start_ms),
            },
            "checkout_step_ms": {"p50": pct(self.checkout_ms, 0.5)},
            "batch": {
                "builds": self.batch_builds,
                "projects": self.batch_projects,
                "completed": self.batch_completed,
                "seconds": self.batch_s,
                "builds_per_s": self.builds_per_s,
            },
        }


async def scripted(database: str, database_url: str, sizes: Sizes, tmp: Path) -> ScriptedFigures:
    """Measurement 1 on one database."""
    figures = ScriptedFigures(database=database, samples=sizes.latency_samples)
    agent = ScriptedAgent()
    settings = bench_settings(tmp / f"data-{database}", database_url)
    run = uuid.uuid4().hex[:6]
    async with serving(settings, workers=sizes.workers, agent=agent) as served:
        project = f"lat-{run}"
        await served.create_project(project)
        for index in range(sizes.latency_samples + 2):  # two warm-up builds first
            sent = time.perf_counter()
            task_id = await served.build(project)
            accepted = time.perf_counter()
            entered = await agent.wait_entered(task_id, 60)
            status = await served.wait_final(task_id)
            if status is not TaskStatus.COMPLETED:
                raise RuntimeError(f"latency build {task_id} ended {status}")
            if index >= 2:
                figures.accept_ms.append((accepted - sent) * 1000)
                figures.start_ms.append((entered - sent) * 1000)
                figures.checkout_ms.append(await served.step_ms(task_id, "checkout"))
        progress(f"{database}: latency p50 {pct(figures.start_ms, 0.5):.1f} ms")

        projects = [f"tp-{run}-{n}" for n in range(sizes.batch_projects)]
        for name in projects:  # each project built once first: the batch measures cache hits
            await served.create_project(name)
        warm = await asyncio.gather(*(served.build(name) for name in projects))
        for task_id in warm:
            await served.wait_final(task_id)
        before = await served.final_count()
        total = sizes.batch_projects * sizes.batch_per_project
        order = [projects[n % len(projects)] for n in range(total)]
        started = time.perf_counter()
        batch = await asyncio.gather(*(served.build(name) for name in order))
        await served.wait_finished(before, total)
        figures.batch_s = time.perf_counter() - started
        figures.batch_builds, figures.batch_projects = total, len(projects)
        statuses = [(await served.container.queue.get(t)).status for t in batch]
        figures.batch_completed = statuses.count(TaskStatus.COMPLETED)
        progress(f"{database}: {figures.builds_per_s:.1f} builds/s")
    return figures


# --- 2. orchestration overhead over bare claude -----------------------------------------------


@dataclass
class OverheadFigures:
    """Figures of measurement 2."""

    rounds: int
    bare_s: list[float] = field(default_factory=list)
    forgeline_s: list[float] = field(default_factory=list)
    steps_ms: dict[str, list[float]] = field(default_factory=dict)
    sse_early_ends: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of these figures."""
        bare, full = statistics.median(self.bare_s), statistics.median(self.forgeline_s)
        return {
            "rounds": self.rounds,
            "bare_claude_s": {"median": bare, "min": min(self.bare_s), "max": max(self.bare_s)},
            "forgeline_s": {
                "median": full,
                "min": min(self.forgeline_s),
                "max": max(self.forgeline_s),
            },
            "overhead_ms": (full - bare) * 1000,
            "overhead_paired_median_ms": statistics.median(
                (f - b) * 1000 for b, f in zip(self.bare_s, self.forgeline_s, strict=True)
            ),
            "ratio": full / bare,
            "steps_median_ms": {k: statistics.median(v) for k, v in self.steps_ms.items()},
            "sse_streams_ended_before_result": self.sse_early_ends,
        }


def bare_env(home: Path, base_url: str) -> dict[str, str]:
    """The bare CLI's environment: what forgeline's adapter would set, nothing inherited."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "IS_SANDBOX": "1",
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "sk-test",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }


async def run_quiet(argv: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> None:
    """Run a short helper command (git), raising on failure."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:2]} failed: {err.decode(errors='replace')[-500:]}")


async def bare_claude(tmp: Path, base_url: str) -> float:
    """One bare ``claude -p`` of the hello.txt conversation in a fresh repository; seconds."""
    run = tmp / f"bare-{uuid.uuid4().hex[:8]}"
    repo, home = run / "repo", run / "home"
    repo.mkdir(parents=True)
    home.mkdir()
    git_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }
    await run_quiet(["git", "init", "-q", "-b", "main"], repo, git_env)
    await run_quiet(["git", "commit", "-q", "--allow-empty", "-m", "initial"], repo, git_env)
    argv = [
        str(CLAUDE_BIN),
        "-p",
        PROMPT,
        "--output-format",
        "stream-json",
        "--verbose",
        "--dangerously-skip-permissions",
    ]
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=repo,
        env=bare_env(home, base_url),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
    elapsed = time.perf_counter() - started
    last = out.decode(errors="replace").strip().splitlines()[-1:] or [""]
    if proc.returncode != 0 or not (repo / "hello.txt").exists():
        raise RuntimeError(
            f"bare claude exited {proc.returncode}: {last[0][:300]} "
            f"{err.decode(errors='replace')[-300:]}"
        )
    if json.loads(last[0]).get("subtype") != "success":
        raise RuntimeError(f"bare claude did not succeed: {last[0][:300]}")
    return elapsed


async def forgeline_claude(served: Served, steps: dict[str, list[float]]) -> float:
    """One build with the real claude through forgeline, POST to the ``result`` event."""
    project = f"oh-{uuid.uuid4().hex[:8]}"
    await served.create_project(project)  # a fresh project: fresh checkout, fresh agent HOME
    started = time.perf_counter()
    task_id = await served.build(project)
    events = await served.events(task_id)
    elapsed = time.perf_counter() - started
    result = events[-1] if events else {}
    if result.get("type") != "result" or result["data"]["status"] != "succeeded":
        raise RuntimeError(f"forgeline build {task_id} did not succeed: {result}")
    task = (await served.client.get(f"/tasks/{task_id}")).json()
    if task["status"] != "completed" or "commit_sha" not in task["result"]["artifacts"]:
        raise RuntimeError(f"forgeline build {task_id}: {task['status']}, no commit")
    for event in events:
        data = event["data"]
        if event["type"] == "status" and data.get("state") == "step" and "duration_ms" in data:
            steps.setdefault(data["step"], []).append(float(data["duration_ms"]))
    return elapsed


async def overhead(sizes: Sizes, tmp: Path) -> OverheadFigures:
    """Measurement 2 on embedded SQLite, one in-process worker."""
    figures = OverheadFigures(rounds=sizes.overhead_rounds)
    with AnthropicServer(hello_script) as model:
        gateway = {"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-test"}
        settings = bench_settings(
            tmp / "data-overhead", claude_bin=str(CLAUDE_BIN), claude_max_retries=0
        )
        with environ(gateway):
            async with serving(settings, workers=1) as served:
                # One of each untimed first: the CLI's 245 MB binary into the page cache.
                await bare_claude(tmp, model.url)
                await forgeline_claude(served, {})
                for n in range(sizes.overhead_rounds):
                    order = ("bare", "forgeline") if n % 2 == 0 else ("forgeline", "bare")
                    for kind in order:
                        if kind == "bare":
                            figures.bare_s.append(await bare_claude(tmp, model.url))
                        else:
                            figures.forgeline_s.append(
                                await forgeline_claude(served, figures.steps_ms)
                            )
                    progress(
                        f"overhead round {n + 1}/{sizes.overhead_rounds}: "
                        f"bare {figures.bare_s[-1]:.2f} s, "
                        f"forgeline {figures.forgeline_s[-1]:.2f} s"
                    )
                figures.sse_early_ends = served.early_ends
    return figures


# --- 3. 20 builds of 20 projects on one worker process ----------------------------------------


@dataclass
class ScaleFigures:
    """Figures of measurement 3."""

    builds: int
    concurrency: int
    hold_s: float
    completed: int = 0
    wall_s: float = 0.0
    worker: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of these figures (memory in MiB)."""
        w = self.worker

        def mib(kb: int | None) -> float:
            return (kb or 0) / 1024

        ready, base, now = w.get("ready", {}), w.get("baseline", {}), w.get("now", {})
        # The kernel updates VmHWM lazily; a sample may have seen a little more.
        hwm = now.get("hwm_kb", 0) if w.get("hwm_reset") else 0
        peak = max(hwm, w.get("sampled_peak_kb", 0))
        return {
            "builds": self.builds,
            "projects": self.builds,
            "concurrency": self.concurrency,
            "agent_hold_s": self.hold_s,
            "completed": self.completed,
            "wall_s": self.wall_s,
            "max_concurrent_agents": w.get("max_running"),
            "worker_memory_mib": {
                "rss_when_ready": mib(ready.get("rss_kb")),
                "rss_before_batch": mib(base.get("rss_kb")),
                "peak_during_batch": mib(peak),
                "peak_source": (
                    "VmHWM since the mark and 10 ms samples" if hwm else "10 ms samples"
                ),
                "delta": mib(peak) - mib(base.get("rss_kb")),
                "sampled_peak_during_batch": mib(w.get("sampled_peak_kb")),
                "rss_after_batch": mib(now.get("rss_kb")),
                "own_hwm_when_ready": mib(ready.get("hwm_kb")),
                "ru_maxrss_when_ready": mib(ready.get("ru_maxrss_kb")),
                "ru_maxrss_at_end": mib(now.get("ru_maxrss_kb")),
            },
        }


class WorkerProcess:
    """The child worker process of measurement 3, spoken to by lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        #: The worker's first line (pid, RSS and ru_maxrss once ready).
        self.ready: dict[str, Any] = {}

    async def read(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """The next JSON line the worker prints."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        if not line:
            raise RuntimeError(f"the worker process ended (exit {await self.proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def ask(self, command: str) -> dict[str, Any]:
        """Send ``command`` and read its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())
        await self.proc.stdin.drain()
        return await self.read()

    async def stop(self) -> None:
        """End of stdin: the worker drains and exits; killed if it does not within 30 s."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@asynccontextmanager
async def worker_process(
    settings: Settings, concurrency: int, hold_s: float
) -> AsyncIterator[WorkerProcess]:
    """``python -m bench._scripted_agent`` on ``settings``' data dir and database."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench._scripted_agent",
        "--data-dir",
        str(settings.data_dir),
        "--database-url",
        settings.database_url,
        "--concurrency",
        str(concurrency),
        "--hold-s",
        str(hold_s),
        "--max-seconds",
        "600",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    worker = WorkerProcess(proc)
    try:
        worker.ready = await worker.read()
        if not worker.ready.get("ready"):
            raise RuntimeError(f"worker process: {worker.ready}")
        yield worker
    finally:
        await worker.stop()


async def scale(database_url: str, sizes: Sizes, tmp: Path) -> ScaleFigures:
    """Measurement 3: the API here with no worker, one worker process with concurrency N."""
    n = sizes.scale_builds
    figures = ScaleFigures(builds=n, concurrency=n, hold_s=sizes.scale_hold_s)
    settings = bench_settings(tmp / "data-scale", database_url)
    run = uuid.uuid4().hex[:6]
    async with (
        serving(settings, workers=0) as served,
        worker_process(settings, n, sizes.scale_hold_s) as worker,
    ):
        warm = f"sw-{run}"
        await served.create_project(warm)
        await served.wait_final(await served.build(warm), 120)
        projects = [f"sc-{run}-{i:02d}" for i in range(n)]
        for name in projects:
            await served.create_project(name)
        before = await served.final_count()
        await worker.ask("mark")
        started = time.perf_counter()
        tasks = await asyncio.gather(*(served.build(name) for name in projects))
        await served.wait_finished(before, n)
        figures.wall_s = time.perf_counter() - started
        figures.worker = await worker.ask("report")
        for task_id in tasks:
            task = (await served.client.get(f"/tasks/{task_id}")).json()
            if task["status"] == "completed" and task["result"]["artifacts"].get("commit_sha"):
                figures.completed += 1
    progress(f"scale: {figures.completed}/{n} completed in {figures.wall_s:.2f} s")
    return figures


# --- the report -----------------------------------------------------------------------------


def table(
    mode: str,
    one: list[ScriptedFigures],
    two: OverheadFigures,
    three: ScaleFigures,
    *,
    sizes: Sizes,
    load: tuple[float, float],
) -> str:
    """The printed report (``load``: the 1-minute load average at the start and the end)."""
    out: list[str] = []
    add = out.append
    add(
        f"forgeline build orchestration benchmark ({mode}), {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end"
    )
    add("")
    add(f"1. Scripted agent (no subprocess), API + in-process worker (concurrency {sizes.workers})")
    add(
        f"   {'':<9} {'POST→202':>9} {'POST→agent start (ms)':>26} {'':>4} "
        f"{'checkout':>9}   {'batch':>8}"
    )
    add(
        f"   {'database':<9} {'p50 ms':>9} {'p50':>8} {'p99':>8} {'mean':>8} {'n':>4} "
        f"{'p50 ms':>9}   {'builds/s':>8}  completed"
    )
    for f in one:
        d = f.to_dict()
        lat = d["post_to_agent_start_ms"]
        add(
            f"   {f.database:<9} {d['post_to_202_ms']['p50']:>9.1f} {lat['p50']:>8.1f} "
            f"{lat['p99']:>8.1f} {lat['mean']:>8.1f} {f.samples:>4} "
            f"{d['checkout_step_ms']['p50']:>9.1f}   {f.builds_per_s:>8.1f}  "
            f"{f.batch_completed}/{f.batch_builds} builds of {f.batch_projects} projects "
            f"in {f.batch_s:.2f} s"
        )
    if len(one) == 2 and all(f.start_ms and f.builds_per_s for f in one):
        sqlite, pg = one
        latency = pct(pg.start_ms, 0.5) / pct(sqlite.start_ms, 0.5)
        rate = pg.builds_per_s / sqlite.builds_per_s
        add(f"   postgres/sqlite: agent-start p50 x{latency:.2f}, builds/s x{rate:.2f}")
    add(
        "   (agent start = the worker entering the agent's execute: queue, claim and the "
        "checkout, a fetch + hard reset"
    )
    add("    of the project's cached clone; the checkout column is that step alone)")
    d2 = two.to_dict()
    bare, full = d2["bare_claude_s"], d2["forgeline_s"]
    add("")
    add(
        f"2. Orchestration overhead, real claude vs the scripted Anthropic API (hello.txt), "
        f"{two.rounds} rounds alternated, SQLite"
    )
    add(f"   {'':<34} {'median':>8} {'min':>8} {'max':>8}")
    for label, row in (
        ("bare claude -p (fresh repo, HOME)", bare),
        ("forgeline POST → result event", full),
    ):
        add(f"   {label:<34} {row['median']:>7.2f}s {row['min']:>7.2f}s {row['max']:>7.2f}s")
    add(
        f"   overhead: {d2['overhead_ms']:+.0f} ms per build (x{d2['ratio']:.2f} the bare run); "
        f"median of the per-round differences {d2['overhead_paired_median_ms']:+.0f} ms"
    )
    steps = ", ".join(f"{k} {v:.0f} ms" for k, v in d2["steps_median_ms"].items())
    add(f"   forgeline steps (median): {steps}")
    if two.sse_early_ends:
        add(
            f"   ({two.sse_early_ends} SSE stream(s) ended before the result event and were "
            "resumed with Last-Event-ID)"
        )
    d3 = three.to_dict()
    mem = d3["worker_memory_mib"]
    add("")
    add(
        f"3. {three.builds} builds of {three.builds} projects at once, one worker process "
        f"(concurrency {three.concurrency}), PostgreSQL, scripted agent thinking "
        f"{three.hold_s:g} s"
    )
    add(
        f"   completed {three.completed}/{three.builds} in {three.wall_s:.2f} s wall; "
        f"at most {d3['max_concurrent_agents']} agents at once"
    )
    add(
        f"   worker RSS: {mem['rss_before_batch']:.1f} MiB before the batch, "
        f"{mem['peak_during_batch']:.1f} MiB at its peak ({mem['delta']:+.1f} MiB; "
        f"{mem['peak_source']}), {mem['rss_after_batch']:.1f} MiB after"
    )
    add(
        f"   worker peak RSS over its life: {mem['own_hwm_when_ready']:.1f} MiB by start-up "
        f"(VmHWM when ready); ru_maxrss {mem['ru_maxrss_at_end']:.1f} MiB (*)"
    )
    add(
        "   (*) Linux carries a forked process's high-water mark over exec: ru_maxrss "
        "starts at the size of the"
    )
    add("       bench process that spawned the worker, so VmHWM is the worker's own figure")
    return "\n".join(out)


async def main() -> int:
    """Run the three measurements and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer samples (about 1-2 min)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--dsn", help="PostgreSQL database to use as is (default: a fresh one)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    configure_logging("error", "console", Redactor())
    if not CLAUDE_BIN.exists():
        print(f"the pinned claude is missing at {CLAUDE_BIN}; run scripts/setup-tools")
        return 2
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="forgeline-builds-bench-") as tmp_name:
        tmp = Path(tmp_name)
        one = [await scripted("sqlite", "", sizes, tmp)]
        with postgres_database(args.dsn) as url:
            one.append(await scripted("postgres", url, sizes, tmp))
        two = await overhead(sizes, tmp)
        with postgres_database(args.dsn) as url:
            three = await scale(url, sizes, tmp)
    mode = "quick" if args.quick else "full"
    load = (load_before, os.getloadavg()[0])
    if args.json:
        document = {
            "mode": mode,
            "cpus": os.cpu_count(),
            "load_average_1m": {"start": load[0], "end": load[1]},
            "scripted": [f.to_dict() for f in one],
            "overhead": two.to_dict(),
            "scale": three.to_dict(),
            "seconds": time.perf_counter() - started,
        }
        print(json.dumps(document, indent=2))
    else:
        print(table(mode, one, two, three, sizes=sizes, load=load))
        print(f"\n(total {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
