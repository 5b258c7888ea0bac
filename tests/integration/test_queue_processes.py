"""The work queue under real concurrency: worker processes, SIGKILL, a database restart."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from forgeline.adapters.queue import build_queue
from forgeline.adapters.sql.database import open_database
from forgeline.adapters.sql.migrate import migrate
from forgeline.domain.task import TaskStatus
from forgeline.ports.queue import NewTask
from tests.conftest import ROOT, free_port

#: Longest any of these tests may wait for its workers.
WORKERS_TIMEOUT_S = 120.0


@dataclass
class Worker:
    """A worker child process and what it reported, read by a thread as it comes."""

    name: str
    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    claimed: threading.Event = field(default_factory=threading.Event)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            self.events.append(event)
            if event["event"] == "ready":
                self.ready.set()
            elif event["event"] == "claimed":
                self.claimed.set()

    def completed(self) -> list[str]:
        return [str(e["id"]) for e in self.events if e["event"] == "completed"]

    def claimed_ids(self) -> list[str]:
        return [str(i) for e in self.events if e["event"] == "claimed" for i in e["ids"]]


class Workers:
    """Starts worker processes and guarantees none outlives the test."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.all: list[Worker] = []
        self._threads: list[threading.Thread] = []

    def start(self, url: str, name: str, *options: str) -> Worker:
        # The child keeps its own copy of the log file descriptor; ours can close now.
        with (self.logs / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.queue_worker", url, name, *options],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        worker = Worker(name, proc)
        thread = threading.Thread(target=worker.read, name=f"read-{name}", daemon=True)
        thread.start()
        self.all.append(worker)
        self._threads.append(thread)
        return worker

    def wait(self, workers: list[Worker]) -> None:
        """Wait for each worker to exit by itself; a failure exit fails the test."""
        for worker in workers:
            code = worker.proc.wait(timeout=WORKERS_TIMEOUT_S)
            log = (self.logs / f"{worker.name}.log").read_text()[-3000:]
            assert code == 0, f"worker {worker.name} exited with {code}:\n{log}"
        for thread in self._threads:
            thread.join(timeout=5)

    def kill_all(self) -> None:
        for worker in self.all:
            if worker.proc.poll() is None:
                worker.proc.kill()
            worker.proc.wait(timeout=10)
        for thread in self._threads:
            thread.join(timeout=5)
        for worker in self.all:
            if worker.proc.stdout is not None:
                worker.proc.stdout.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Worker processes, all killed and reaped at the end of the test."""
    pool = Workers(tmp_path)
    try:
        yield pool
    finally:
        pool.kill_all()


async def _prepare(url: str, count: int) -> list[str]:
    """Migrate a fresh database and enqueue ``count`` tasks in one batch; their ids."""
    db = open_database(url)
    await db.open()
    try:
        await migrate(db)
        queue = build_queue(db)
        done = await queue.enqueue_many([NewTask("noop", {"i": i}) for i in range(count)])
        await queue.aclose()
        return [d.task.id for d in done]
    finally:
        await db.aclose()


async def _statuses(url: str) -> Counter[str]:
    """How many tasks are in each status."""
    db = open_database(url)
    await db.open()
    try:
        queue = build_queue(db)
        counts = Counter({s.value: await queue.count(status=s) for s in TaskStatus})
        await queue.aclose()
        return +counts
    finally:
        await db.aclose()


def _assert_each_completed_once(ids: list[str], workers: list[Worker]) -> Counter[str]:
    """Every task was completed by exactly one worker; returns completions per worker."""
    completions = Counter(task_id for w in workers for task_id in w.completed())
    assert sorted(completions) == sorted(ids)
    assert set(completions.values()) == {1}
    return Counter({w.name: len(w.completed()) for w in workers})


@pytest.mark.postgres
@pytest.mark.slow
async def test_postgres_eight_workers_two_thousand_tasks(pg_url: str, workers: Workers) -> None:
    """8 worker processes claiming 2,000 tasks at once complete each exactly once."""
    ids = await _prepare(pg_url, 2000)
    started = [workers.start(pg_url, f"w{i}", "--limit", "10") for i in range(8)]
    await asyncio.to_thread(workers.wait, started)
    per_worker = _assert_each_completed_once(ids, started)
    assert len(+per_worker) > 1  # the work was really shared
    assert await _statuses(pg_url) == Counter({"completed": 2000})


@pytest.mark.postgres
@pytest.mark.slow
async def test_postgres_sigkilled_worker_tasks_recovered(pg_url: str, workers: Workers) -> None:
    """Tasks leased by a SIGKILLed worker are recovered after the lease and completed once."""
    ids = await _prepare(pg_url, 200)
    holder = workers.start(pg_url, "doomed", "--hold", "--limit", "20", "--lease", "1")
    assert await asyncio.to_thread(holder.claimed.wait, 30)
    held = holder.claimed_ids()
    assert len(held) == 20
    holder.proc.send_signal(signal.SIGKILL)
    assert holder.proc.wait(timeout=10) == -signal.SIGKILL
    rest = [workers.start(pg_url, f"w{i}", "--limit", "5") for i in range(2)]
    await asyncio.to_thread(workers.wait, rest)
    _assert_each_completed_once(ids, rest)
    db = open_database(pg_url)
    await db.open()
    try:
        queue = build_queue(db)
        for task_id in held:
            task = await queue.get(task_id)
            assert task.status is TaskStatus.COMPLETED
            assert task.attempts == 2
            assert task.lease_token == 2
            assert task.result == {"worker": task.worker}
        await queue.aclose()
    finally:
        await db.aclose()


class Cluster:
    """A throwaway PostgreSQL cluster on a free port, which this test may restart.

    The shared server of the test run must never be restarted (others use it); this one
    belongs to one test. PostgreSQL refuses to run as root, so as root it runs as the
    ``postgres`` (or a created ``pgtest``) system user, like scripts/ensure-postgres.
    """

    def __init__(self) -> None:
        bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not bindirs:
            pytest.fail("no PostgreSQL binaries under /usr/lib/postgresql", pytrace=False)
        self.bin = bindirs[-1]
        self.dir = Path(tempfile.mkdtemp(prefix="forgeline-pg-"))
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = self._system_user()
            shutil.chown(self.dir, self.user)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def _system_user() -> str:
        for name in ("postgres", "pgtest"):
            if subprocess.run(["id", name], capture_output=True, check=False).returncode == 0:
                return name
        subprocess.run(["useradd", "-r", "-M", "pgtest"], check=True)
        return "pgtest"

    def _pg(self, tool: str, *args: str) -> None:
        argv = [str(self.bin / tool), *args]
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=60)

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg(
            "pg_ctl", "-s", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"),
            "-o", options, "-w", *extra, action,
        )  # fmt: skip

    def start(self) -> None:
        self._pg(
            "initdb", "-D", str(self.dir / "data"), "-U", "postgres", "-A", "trust", "--no-sync"
        )
        self._ctl("start")

    def restart(self) -> None:
        """Crash-stop (like a power cut) and start again: every connection breaks."""
        self._ctl("restart", "-m", "immediate")

    def stop(self) -> None:
        if (self.dir / "data" / "postmaster.pid").exists():
            self._ctl("stop", "-m", "immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A private PostgreSQL cluster, stopped and removed afterwards."""
    own = Cluster()
    try:
        own.start()
        yield own
    finally:
        own.stop()


@pytest.mark.postgres
@pytest.mark.slow
async def test_postgres_restart_loses_nothing(cluster: Cluster, workers: Workers) -> None:
    """PostgreSQL restarted under 4 running workers: no task lost, none completed twice."""
    ids = await _prepare(cluster.url, 600)
    started = [
        workers.start(cluster.url, f"w{i}", "--limit", "4", "--work-s", "0.005") for i in range(4)
    ]

    def some_progress() -> None:
        deadline = 60.0
        step = 0.02
        while sum(len(w.completed()) for w in started) < 100 and deadline > 0:
            threading.Event().wait(step)
            deadline -= step

    await asyncio.to_thread(some_progress)
    await asyncio.to_thread(cluster.restart)
    await asyncio.to_thread(workers.wait, started)
    _assert_each_completed_once(ids, started)
    # The restart really cut the workers off (their listeners saw it), mid-run.
    for worker in started:
        assert "lost its connection" in (workers.logs / f"{worker.name}.log").read_text()
    assert await _statuses(cluster.url) == Counter({"completed": 600})


async def test_sqlite_four_workers_one_file(tmp_path: Path, workers: Workers) -> None:
    """4 worker processes on one SQLite file complete each task exactly once."""
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    ids = await _prepare(url, 800)
    started = [workers.start(url, f"w{i}", "--limit", "5") for i in range(4)]
    await asyncio.to_thread(workers.wait, started)
    per_worker = _assert_each_completed_once(ids, started)
    assert len(+per_worker) > 1
    assert await _statuses(url) == Counter({"completed": 800})
