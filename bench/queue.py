# ruff: noqa: A005  # the issue names this file bench/queue.py; see the sys.path fix below
"""Work queue benchmark: forgeline (PostgreSQL, SQLite) against procrastinate, pgqueuer and a
raw ``FOR UPDATE SKIP LOCKED`` loop, on one PostgreSQL database, a fresh schema per system.

Figures per system:

- enqueue rate, one by one (one call per task) and batched (1,000 per call);
- drain throughput: N no-op tasks queued up front, then 1, 2, 4 and 8 worker processes
  take them all (from the "go" to the last completion);
- enqueue-to-start latency (p50, p99) at a steady 200 tasks/s with 4 worker processes.

Each worker process runs up to ``--slots`` tasks at once (default 50) where its system has
the notion (procrastinate ``concurrency``, pgqueuer ``batch_size`` — pgqueuer itself puts
no cap on tasks in flight —, forgeline claims up to its free slots in one call); the raw
reference claims one task at a time, as the simplest correct loop does.

Usage::

    python bench/queue.py [--quick] [--json] [--dsn postgresql://…] [--systems a,b] [--slots N]

The DSN comes from ``--dsn``, else ``FORGELINE_BENCH_DSN``, else the test server. Benchmarks
print figures; nothing here asserts a timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the standard library's ``queue``: keep its folder off the import
# path, or ``import queue`` (asyncio, multiprocessing, psycopg_pool use it) finds this file.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator, Awaitable, Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import timedelta  # noqa: E402
from typing import Any  # noqa: E402

import psycopg  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402

SYSTEMS = ("forgeline-postgres", "forgeline-sqlite", "procrastinate", "pgqueuer", "raw-skip-locked")
WORKER_COUNTS = (1, 2, 4, 8)
#: Tasks one worker process runs at once (``--slots``): forgeline's slots, procrastinate's
#: ``concurrency``, pgqueuer's ``batch_size``. Set from the command line (children too).
SLOTS = 50
#: Connections per worker process (the server is shared; 8 workers must fit).
POOL = 4
BATCH = 1000
RATE_PER_S = 200.0
LATENCY_WORKERS = 4
LATENCY_ROUNDS = 3


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    enqueue_one: int
    drain: int
    latency_s: float

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        """A few seconds per measurement with ``--quick``, the issue's sizes otherwise."""
        return cls(300, 2_000, 3.0) if quick else cls(3_000, 20_000, 15.0)


def schema_dsn(dsn: str, system: str) -> str:
    """``dsn`` with the search path set to the system's own schema."""
    return make_conninfo(dsn, options=f"-c search_path={schema_name(system)}")


def schema_name(system: str) -> str:
    """The schema holding one system's tables."""
    return "bench_" + system.replace("-", "_")


# --------------------------------------------------------------------------------------
# One adapter per system: set-up and enqueue in the parent, the worker loop in children.
# --------------------------------------------------------------------------------------


class Bench:
    """What the harness needs from one queue system."""

    name: str

    def __init__(self, dsn: str, sqlite_path: Path) -> None:
        self.dsn = schema_dsn(dsn, self.name)
        self.sqlite_path = sqlite_path

    async def install(self) -> None:
        """Create the system's schema objects (the schema itself exists, empty)."""
        raise NotImplementedError

    def producer(self) -> contextlib.AbstractAsyncContextManager[Producer]:
        """An open handle that enqueues ``{"t": <time>}`` payloads."""
        raise NotImplementedError

    async def clear(self) -> None:
        """Remove every task (between measurements)."""
        raise NotImplementedError

    async def work(self, name: str, drain: bool, started: Callable[[float], None]) -> None:
        """Run one worker: call ``started(payload_t)`` as each task starts; with ``drain``,
        return once no task is left, else run until cancelled."""
        raise NotImplementedError


@dataclass
class Producer:
    """Enqueue one payload, or a batch of them."""

    one: Callable[[dict[str, float]], Awaitable[None]]
    many: Callable[[list[dict[str, float]]], Awaitable[None]]


class ForgelinePostgres(Bench):
    """forgeline's PostgreSQL adapter; a worker claims up to its free slots at once."""

    name = "forgeline-postgres"

    def _db(self, max_size: int = POOL) -> Any:
        from forgeline.adapters.sql.database import PostgresDatabase

        return PostgresDatabase(self.dsn, max_size=max_size)

    def _queue(self, db: Any) -> Any:
        from forgeline.adapters.queue import build_queue

        return build_queue(db)

    async def install(self) -> None:
        from forgeline.adapters.sql.migrate import migrate

        db = self._db()
        await db.open()
        try:
            await migrate(db)
        finally:
            await db.aclose()

    @contextlib.asynccontextmanager
    async def producer(self) -> AsyncIterator[Producer]:
        from forgeline.ports.queue import NewTask

        db = self._db(max_size=2)
        await db.open()
        queue = self._queue(db)

        async def one(payload: dict[str, float]) -> None:
            await queue.enqueue("noop", payload)

        async def many(payloads: list[dict[str, float]]) -> None:
            await queue.enqueue_many([NewTask("noop", p) for p in payloads])

        try:
            yield Producer(one, many)
        finally:
            await queue.aclose()
            await db.aclose()

    async def clear(self) -> None:
        db = self._db()
        await db.open()
        try:
            async with db.connection() as conn:
                await conn.execute("truncate tasks")
        finally:
            await db.aclose()

    async def work(self, name: str, drain: bool, started: Callable[[float], None]) -> None:
        db = self._db()
        await db.open()
        queue = self._queue(db)
        try:
            await _forgeline_loop(queue, name, drain, started)
        finally:
            await queue.aclose()
            await db.aclose()


class ForgelineSqlite(ForgelinePostgres):
    """forgeline's SQLite adapter, on a file of its own (no PostgreSQL involved)."""

    name = "forgeline-sqlite"

    def _db(self, max_size: int = POOL) -> Any:
        from forgeline.adapters.sql.database import SqliteDatabase

        return SqliteDatabase(self.sqlite_path, pool_size=min(max_size, 4))

    async def clear(self) -> None:
        db = self._db()
        await db.open()
        try:
            await db.write(lambda conn: conn.execute("delete from tasks"))
        finally:
            await db.aclose()


async def _forgeline_loop(
    queue: Any, name: str, drain: bool, started: Callable[[float], None]
) -> None:
    """A worker of ``SLOTS`` slots: claim up to the free slots in one call, run each task in
    its own asyncio task; a slot frees as soon as its task's work is done, while the
    completion commits in the background (group-committed with its neighbours), so the
    next claim overlaps the last completions instead of waiting for them."""
    free = SLOTS
    freed = asyncio.Event()
    running: set[asyncio.Task[None]] = set()

    async def run(lease: Any) -> None:
        nonlocal free
        try:
            started(lease.task.payload["t"])
        finally:
            free += 1
            freed.set()
        await queue.complete(lease)

    while True:
        if free == 0:
            freed.clear()
            await freed.wait()
            continue
        leases = await queue.claim(name, lease_s=60, limit=free)
        free -= len(leases)
        for lease in leases:
            task = asyncio.create_task(run(lease), name=f"{name}-{lease.task_id}")
            running.add(task)
            task.add_done_callback(running.discard)
        if leases:
            continue
        if drain:
            if running:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                continue
            return
        await queue.wait_for_work(1.0)


class Procrastinate(Bench):
    """procrastinate 3.10 with its psycopg connector; ``concurrency=10`` per worker."""

    name = "procrastinate"

    def _app(self, started: Callable[[float], None] | None = None) -> Any:
        import procrastinate

        app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=self.dsn, min_size=1, max_size=POOL)
        )

        @app.task(name="noop", queue="bench")
        async def noop(t: float) -> None:
            if started is not None:
                started(t)

        app.noop = noop  # type: ignore[attr-defined]
        return app

    async def install(self) -> None:
        app = self._app()
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    @contextlib.asynccontextmanager
    async def producer(self) -> AsyncIterator[Producer]:
        app = self._app()
        async with app.open_async():

            async def one(payload: dict[str, float]) -> None:
                await app.noop.defer_async(**payload)

            async def many(payloads: list[dict[str, float]]) -> None:
                await app.noop.batch_defer_async(*payloads)

            yield Producer(one, many)

    async def clear(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute("truncate procrastinate_jobs cascade")

    async def work(self, name: str, drain: bool, started: Callable[[float], None]) -> None:
        app = self._app(started)
        async with app.open_async():
            await app.run_worker_async(
                name=name,
                queues=["bench"],
                concurrency=SLOTS,
                wait=not drain,
                install_signal_handlers=False,
                delete_jobs="never",
            )


class PgQueuer(Bench):
    """pgqueuer 1.6 on a psycopg connection; ``batch_size=10`` per worker."""

    name = "pgqueuer"

    async def _conn(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)

    async def install(self) -> None:
        from pgqueuer import PsycopgDriver, Queries

        async with await self._conn() as conn:
            await Queries(PsycopgDriver(conn)).install()

    @contextlib.asynccontextmanager
    async def producer(self) -> AsyncIterator[Producer]:
        from pgqueuer import PsycopgDriver, Queries

        async with await self._conn() as conn:
            queries = Queries(PsycopgDriver(conn))

            async def one(payload: dict[str, float]) -> None:
                await queries.enqueue("noop", json.dumps(payload).encode())

            async def many(payloads: list[dict[str, float]]) -> None:
                await queries.enqueue(
                    ["noop"] * len(payloads),
                    [json.dumps(p).encode() for p in payloads],
                    [0] * len(payloads),
                )

            yield Producer(one, many)

    async def clear(self) -> None:
        from pgqueuer import PsycopgDriver, Queries

        async with await self._conn() as conn:
            queries = Queries(PsycopgDriver(conn))
            await queries.clear_queue()
            await queries.clear_queue_log()
            await queries.clear_statistics_log()

    async def work(self, name: str, drain: bool, started: Callable[[float], None]) -> None:
        from pgqueuer import PsycopgDriver, Queries, QueueManager
        from pgqueuer.models import Job
        from pgqueuer.types import QueueExecutionMode

        async with await self._conn() as conn:
            qm = QueueManager(Queries(PsycopgDriver(conn)))

            @qm.entrypoint("noop")
            async def noop(job: Job) -> None:
                started(json.loads(job.payload or b"{}")["t"])

            mode = QueueExecutionMode.drain if drain else QueueExecutionMode.continuous
            try:
                await qm.run(batch_size=SLOTS, mode=mode, dequeue_timeout=timedelta(seconds=1))
            finally:
                qm.shutdown.set()


class RawSkipLocked(Bench):
    """The reference: one ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1)``
    per task on psycopg 3, a trigger NOTIFY to wake idle workers."""

    name = "raw-skip-locked"

    async def _conn(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)

    async def install(self) -> None:
        async with await self._conn() as conn:
            await conn.execute(
                """
                create table jobs (
                    id bigserial primary key,
                    status text not null default 'todo',
                    payload jsonb not null);
                create index jobs_todo on jobs (id) where status = 'todo';
                create function jobs_notify() returns trigger language plpgsql as $$
                begin perform pg_notify('raw_jobs', ''); return null; end; $$;
                create trigger jobs_notify after insert on jobs
                    for each statement execute function jobs_notify();
                """
            )

    @contextlib.asynccontextmanager
    async def producer(self) -> AsyncIterator[Producer]:
        async with await self._conn() as conn:

            async def one(payload: dict[str, float]) -> None:
                await conn.execute("insert into jobs (payload) values (%s)", (json.dumps(payload),))

            async def many(payloads: list[dict[str, float]]) -> None:
                await conn.execute(
                    "insert into jobs (payload) select unnest(%s::jsonb[])",
                    ([json.dumps(p) for p in payloads],),
                )

            yield Producer(one, many)

    async def clear(self) -> None:
        async with await self._conn() as conn:
            await conn.execute("truncate jobs")

    async def work(self, name: str, drain: bool, started: Callable[[float], None]) -> None:
        claim = """update jobs set status = 'doing' where id = (
            select id from jobs where status = 'todo' order by id
            limit 1 for update skip locked) returning id, payload"""
        async with await self._conn() as conn, await self._conn() as listener:
            await listener.execute("listen raw_jobs")
            while True:
                row = await (await conn.execute(claim)).fetchone()
                if row is None:
                    if drain:
                        return
                    async for _ in listener.notifies(timeout=1.0, stop_after=1):
                        pass
                    continue
                started(row[1]["t"])
                await conn.execute("update jobs set status = 'done' where id = %s", (row[0],))


BENCHES: dict[str, type[Bench]] = {
    b.name: b for b in (ForgelinePostgres, ForgelineSqlite, Procrastinate, PgQueuer, RawSkipLocked)
}


# --------------------------------------------------------------------------------------
# Worker processes: started by the harness, told "go", report on stdout.
# --------------------------------------------------------------------------------------


async def worker_main(system: str, dsn: str, sqlite_path: str, name: str, drain: bool) -> None:
    """A child: wait for "go" on stdin, work, report latencies and the last start time."""
    from forgeline.logs import Redactor, configure_logging

    # Logs to stderr: stdout carries the messages the harness parses.
    configure_logging("WARNING", "console", Redactor())
    bench = BENCHES[system](dsn, Path(sqlite_path))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    count = 0
    last = 0.0

    def started(t: float) -> None:
        nonlocal count, last
        now = time.time()
        count += 1
        last = now
        if not drain:
            _say({"latencies": [now - t]})

    _say({"ready": True})
    await reader.readline()  # "go"
    work = asyncio.create_task(bench.work(name, drain, started), name=f"work-{name}")
    if drain:
        await work
    else:
        # Run until the harness closes our stdin.
        stop = asyncio.create_task(reader.read(), name="stdin-eof")
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
    _say({"done": count, "last": last})


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


@dataclass
class Child:
    """A worker process as the harness sees it."""

    proc: asyncio.subprocess.Process
    latencies: list[float] = field(default_factory=list)
    done: int = 0
    last: float = 0.0

    async def read_until(self, key: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker exited early with {await self.proc.wait()}")
            message = json.loads(line)
            if "latencies" in message:
                self.latencies.extend(message["latencies"])
            if key in message:
                if key == "done":
                    self.done, self.last = message["done"], message["last"]
                return message


async def start_children(
    system: str, dsn: str, sqlite_path: Path, count: int, drain: bool
) -> list[Child]:
    """Start ``count`` worker processes and wait until each is connected-ready."""
    children = []
    for i in range(count):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--worker",
            system,
            f"w{i}",
            "--drain" if drain else "--serve",
            "--dsn",
            dsn,
            "--sqlite-path",
            str(sqlite_path),
            "--slots",
            str(SLOTS),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        children.append(Child(proc))
    for child in children:
        await asyncio.wait_for(child.read_until("ready"), 60)
    return children


async def stop_children(children: list[Child]) -> None:
    """Reap every child (they exit by themselves; kill stragglers)."""
    for child in children:
        try:
            await asyncio.wait_for(child.proc.wait(), 30)
        except TimeoutError:
            child.proc.kill()
            await child.proc.wait()


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------


async def measure_enqueue(bench: Bench, sizes: Sizes) -> tuple[float, float]:
    """Tasks per second enqueued one by one, and in batches of ``BATCH``."""
    await bench.clear()
    async with bench.producer() as producer:
        for _ in range(50):  # warm up: connections, prepared statements, caches
            await producer.one({"t": time.time()})
        start = time.perf_counter()
        for _ in range(sizes.enqueue_one):
            await producer.one({"t": time.time()})
        one = sizes.enqueue_one / (time.perf_counter() - start)
        total = max(sizes.drain, BATCH * 5)
        start = time.perf_counter()
        for _ in range(total // BATCH):
            await producer.many([{"t": 0.0}] * BATCH)
        batched = total / (time.perf_counter() - start)
    await bench.clear()
    return one, batched


async def measure_drain(bench: Bench, sizes: Sizes, workers: int, sqlite_path: Path) -> float:
    """Tasks per second from "go" to the last task started, ``workers`` processes."""
    await bench.clear()
    async with bench.producer() as producer:
        for start in range(0, sizes.drain, BATCH):
            await producer.many([{"t": 0.0}] * min(BATCH, sizes.drain - start))
    children = await start_children(bench.name, _BASE_DSN, sqlite_path, workers, drain=True)
    go = time.time()
    for child in children:
        assert child.proc.stdin is not None
        child.proc.stdin.write(b"go\n")
        await child.proc.stdin.drain()
    for child in children:
        await asyncio.wait_for(child.read_until("done"), 600)
    await stop_children(children)
    done = sum(c.done for c in children)
    if done != sizes.drain:
        raise RuntimeError(f"{bench.name}: {done} of {sizes.drain} tasks ran")
    return done / (max(c.last for c in children) - go)


async def measure_latency(bench: Bench, seconds: float, sqlite_path: Path) -> list[float]:
    """Enqueue-to-start latencies in milliseconds at ``RATE_PER_S`` for ``seconds``, with
    ``LATENCY_WORKERS`` idle workers waiting for the work."""
    await bench.clear()
    children = await start_children(
        bench.name, _BASE_DSN, sqlite_path, LATENCY_WORKERS, drain=False
    )
    for child in children:
        assert child.proc.stdin is not None
        child.proc.stdin.write(b"go\n")
        await child.proc.stdin.drain()
    await asyncio.sleep(1.0)  # let every worker settle into its idle wait
    total = int(seconds * RATE_PER_S)
    readers = [
        asyncio.create_task(c.read_until("done"), name=f"read-{i}") for i, c in enumerate(children)
    ]
    async with bench.producer() as producer:
        start = time.perf_counter()
        for i in range(total):
            # A steady rate: sleep until this task's slot, however long the last enqueue took.
            delay = start + i / RATE_PER_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.one({"t": time.time()})
    async with asyncio.timeout(60):
        # The readers fill c.latencies; polling them is simplest for a harness.
        while sum(len(c.latencies) for c in children) < total:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    for child in children:
        assert child.proc.stdin is not None
        child.proc.stdin.close()
    await asyncio.gather(*readers)
    await stop_children(children)
    return [s * 1000 for c in children for s in c.latencies]


def percentiles(latencies: list[float]) -> tuple[float, float]:
    """p50 and p99 of ``latencies``."""
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * len(ordered)) - 1)]
    return statistics.median(ordered), p99


_BASE_DSN = ""


async def run_all(
    dsn: str, systems: list[str], sizes: Sizes, say: Callable[[str], None]
) -> dict[str, Any]:
    """Every measurement of every system; ``{"<system>": {…figures…}}``."""
    global _BASE_DSN  # noqa: PLW0603  # children are started with the same DSN
    _BASE_DSN = dsn
    results: dict[str, Any] = {s: {"drain_per_s": {}} for s in systems}
    with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as tmp:
        benches = {s: BENCHES[s](dsn, Path(tmp) / f"{s}.db") for s in systems}
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            try:
                for system, bench in benches.items():
                    schema = schema_name(system)
                    await admin.execute(f"drop schema if exists {schema} cascade")
                    if system != "forgeline-sqlite":  # its tables live in a file
                        await admin.execute(f"create schema {schema}")
                    await bench.install()
                # Measurement by measurement, every system in turn: on a shared machine the
                # load drifts, and this spreads the drift evenly instead of onto one system.
                for system, bench in benches.items():
                    say(f"{system}: enqueue")
                    one, batched = await measure_enqueue(bench, sizes)
                    results[system]["enqueue_per_s"] = one
                    results[system]["enqueue_batched_per_s"] = batched
                order = list(benches.items())
                for workers in WORKER_COUNTS:
                    for system, bench in order:
                        say(f"{system}: drain with {workers} worker(s)")
                        results[system]["drain_per_s"][str(workers)] = await measure_drain(
                            bench, sizes, workers, bench.sqlite_path
                        )
                    order = order[1:] + order[:1]  # nobody always goes first
                # Latency in rounds, every system in turn, so a burst of load elsewhere on
                # the machine hits all of them alike.
                latencies: dict[str, list[float]] = {s: [] for s in systems}
                for round_ in range(LATENCY_ROUNDS):
                    for system, bench in order:
                        say(f"{system}: latency round {round_ + 1}/{LATENCY_ROUNDS}")
                        latencies[system] += await measure_latency(
                            bench, sizes.latency_s / LATENCY_ROUNDS, bench.sqlite_path
                        )
                    order = order[1:] + order[:1]
                for system in systems:
                    p50, p99 = percentiles(latencies[system])
                    results[system]["p50_ms"] = p50
                    results[system]["p99_ms"] = p99
            finally:
                for system in systems:
                    await admin.execute(f"drop schema if exists {schema_name(system)} cascade")
    return results


def _drain_of(workers: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: float(r["drain_per_s"][workers])


def table(results: dict[str, Any]) -> str:
    """The figures as a text table, with ratios to the best of procrastinate and pgqueuer."""
    peers = [results[s] for s in ("procrastinate", "pgqueuer") if s in results]
    rows = [
        ("enqueue/s (one by one)", lambda r: r["enqueue_per_s"], max, "{:,.0f}"),
        ("enqueue/s (batched)", lambda r: r["enqueue_batched_per_s"], max, "{:,.0f}"),
        *[(f"drain/s, {n} worker(s)", _drain_of(str(n)), max, "{:,.0f}") for n in WORKER_COUNTS],
        ("p50 enqueue-to-start ms", lambda r: r["p50_ms"], min, "{:.1f}"),
        ("p99 enqueue-to-start ms", lambda r: r["p99_ms"], min, "{:.1f}"),
    ]
    names = list(results)
    header = ["figure", *names]
    if peers:
        header += ["fl-pg / best peer"]
    lines = [header]
    for label, get, best, fmt in rows:
        line = [label, *(fmt.format(get(results[s])) for s in names)]
        if peers:
            reference = best(get(p) for p in peers)
            mine = get(results["forgeline-postgres"]) if "forgeline-postgres" in results else None
            line.append("-" if mine is None else f"{mine / reference:.2f}x")
        lines.append(line)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for i, line in enumerate(lines):
        out.append(
            "  ".join(
                str(c).rjust(w) if j else str(c).ljust(w)
                for j, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append(f"slots per worker process: {SLOTS}; raw-skip-locked claims one at a time")
    out.append(
        "ratio: forgeline-postgres divided by the best of procrastinate and pgqueuer "
        "(higher is better for rates, lower for latencies)"
    )
    return "\n".join(out)


def main() -> None:
    """Parse arguments; run the harness (or, with ``--worker``, one worker process)."""
    import logging

    # procrastinate warns that the App lives in __main__; true, and harmless here.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=None, help="PostgreSQL URL (else FORGELINE_BENCH_DSN)")
    parser.add_argument("--quick", action="store_true", help="a few seconds per measurement")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument("--slots", type=int, default=50, help="tasks per worker at once")
    parser.add_argument("--worker", nargs=2, metavar=("SYSTEM", "NAME"), help=argparse.SUPPRESS)
    parser.add_argument("--drain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sqlite-path", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global SLOTS  # noqa: PLW0603  # one knob for every system, read by the workers
    SLOTS = args.slots
    dsn = (
        args.dsn
        or os.environ.get("FORGELINE_BENCH_DSN")
        or os.environ.get("FORGELINE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    if args.worker:
        system, name = args.worker
        asyncio.run(worker_main(system, dsn, args.sqlite_path, name, drain=args.drain))
        return
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")

    def say(text: str) -> None:
        print(f"... {text}", file=sys.stderr, flush=True)

    results = asyncio.run(run_all(dsn, systems, Sizes.of(args.quick), say))
    if args.json:
        print(json.dumps(results))
    else:
        print(table(results))


if __name__ == "__main__":
    main()
