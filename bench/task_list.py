"""Task listing benchmark: what a page of ``GET /tasks`` costs the queue as tasks pile up.

Run from the repository root::

    .venv/bin/python -m bench.task_list [--tasks N] [--pg postgresql://…]

Figures, on SQLite (a temporary file) and PostgreSQL (a throwaway database on ``--pg``,
else ``FORGELINE_TEST_PG_URL``, else the test server), with ``N`` build tasks spread over
50 projects plus 3 of a rare project enqueued in the middle:

- the newest page (51 rows: a page of 50 and the look-ahead for ``next_cursor``) of all
  builds, of one of the 50 projects, and of the rare project (``?project=``), which no
  index serves: the rows are walked newest first until the page is full or they end;
- the same for the page after a cursor half-way down.

Planner statistics are refreshed after the fill, as autovacuum would have by then.

The milliseconds per page say when listing by project would want an index of its own
(every index of ``tasks`` costs each claim and completion a write). Benchmarks print
figures; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg

from forgeline.adapters.queue import build_queue
from forgeline.adapters.sql.database import Database, PostgresDatabase, SqliteDatabase
from forgeline.adapters.sql.migrate import migrate
from forgeline.ports.queue import NewTask, WorkQueue
from forgeline.services.builds import BUILD_KIND

PROJECTS = 50
PAGE = 51
RUNS = 10


@asynccontextmanager
async def databases(pg: str) -> AsyncIterator[list[tuple[str, Database, Callable[[], None]]]]:
    """A fresh SQLite file and a throwaway PostgreSQL database, both migrated, each with a
    function that refreshes its planner statistics (what autovacuum does in a live one)."""
    name = f"forgeline_bench_{uuid.uuid4().hex[:8]}"
    url = f"{pg.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')

    def analyze_pg() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("analyze tasks")

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.db"

            def analyze_sqlite() -> None:
                with contextlib.closing(sqlite3.connect(path)) as conn:
                    conn.execute("analyze tasks")

            opened: list[tuple[str, Database, Callable[[], None]]] = [
                ("sqlite", SqliteDatabase(path), analyze_sqlite),
                ("postgres", PostgresDatabase(url), analyze_pg),
            ]
            for _, db, _ in opened:
                await db.open()
                await migrate(db)
            try:
                yield opened
            finally:
                for _, db, _ in opened:
                    await db.aclose()
    finally:
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def key(i: int) -> str:
    """The project of the ``i``-th task."""
    return f"p{i % PROJECTS}"


async def fill(queue: WorkQueue, tasks: int) -> None:
    """``tasks`` builds round-robin over the projects, the rare project's 3 in the middle."""

    async def batch(start: int, stop: int) -> None:
        for first in range(start, stop, 1000):
            await queue.enqueue_many(
                [
                    NewTask(
                        BUILD_KIND,
                        {"project": f"p{i % PROJECTS}"},
                        concurrency_key=f"p{i % PROJECTS}",
                    )
                    for i in range(first, min(first + 1000, stop))
                ]
            )

    await batch(0, tasks // 2)
    rare = NewTask(BUILD_KIND, {"project": "rare"}, concurrency_key="rare")
    await queue.enqueue_many([rare, rare, rare])
    await batch(tasks // 2, tasks)


async def page_ms(queue: WorkQueue, **filters: object) -> float:
    """Milliseconds per page of ``queue.list(**filters)``, the mean of :data:`RUNS`."""
    started = time.perf_counter()
    for _ in range(RUNS):
        await queue.list(kind=BUILD_KIND, limit=PAGE, **filters)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / RUNS * 1000


async def main() -> None:
    """Fill each database, then time pages."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument(
        "--pg",
        default=os.environ.get(
            "FORGELINE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    print(f"{args.tasks} build tasks over {PROJECTS} projects; ms per page of {PAGE}")
    print(f"{'database':9} {'all':>8} {'project':>8} {'rare':>8} {'all, p.2':>9} {'rare, p.2':>10}")
    async with databases(args.pg) as opened:
        for label, db, analyze in opened:
            queue = build_queue(db)
            await fill(queue, args.tasks)
            await asyncio.to_thread(analyze)
            middle = args.tasks // 2
            figures = [
                await page_ms(queue),
                await page_ms(queue, concurrency_keys=["p7"]),
                await page_ms(queue, concurrency_keys=["rare"]),
                await page_ms(queue, before=middle),
                await page_ms(queue, concurrency_keys=["rare"], before=middle),
            ]
            await queue.aclose()
            cells = " ".join(f"{f:8.1f}" for f in figures[:3])
            print(f"{label:9} {cells} {figures[3]:9.1f} {figures[4]:10.1f}")


if __name__ == "__main__":
    asyncio.run(main())
