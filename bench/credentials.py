"""Credential store and redaction benchmark.

Run from the repository root::

    .venv/bin/python -m bench.credentials [--quick] [--pg postgresql://…]

Figures:

- redaction throughput (MB/s) of :class:`forgeline.logs.Redactor` on a log line, a tool
  output at its 16 KiB cap and 1 MiB of text, with 1 to 500 registered values, against the
  naive approach it replaced (one regex alternation of every value, ``sub``); both mask the
  same set of strings (values and their encoded forms);
- store operations per second on SQLite (a temporary file) and PostgreSQL (a throwaway
  database on ``--pg``, else ``FORGELINE_TEST_PG_URL``, else the test server): put, get,
  get recording a use, resolve of 5 credentials, list; and a key rotation of N credentials.

Benchmarks print figures; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import secrets
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from forgeline.adapters.credentials import open_credential_store
from forgeline.adapters.credentials.keys import KeyRing, MasterKey
from forgeline.adapters.sql.database import Database, PostgresDatabase, SqliteDatabase
from forgeline.adapters.sql.migrate import migrate
from forgeline.domain.secrets import Secret
from forgeline.logs import Redactor

_LINES = (
    "the build step ran npm install and wrote dist index html with a dark theme",
    "PATH=/usr/local/bin:/usr/bin HOME=/home/agent git push origin main commit",
    "function render(props) { return <Page title={props.title} /> } error warning",
    "src/pages/index.astro tests passed 42 ms OK /workspace/myapp 2026-11-25T02:11:18Z",
)
_WORDS = [word for line in _LINES for word in line.split()]


def sample_text(size: int, rng: random.Random) -> str:
    """Log- and code-like text of about ``size`` characters."""
    parts: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        parts.append(word)
        length += len(word) + 1
    return " ".join(parts)[:size]


def _rate(fn: Callable[[], object], size: int, min_time: float) -> float:
    """MB/s of ``fn`` over a text of ``size`` characters, repeated for ``min_time`` seconds."""
    runs = 0
    start = time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return runs * size / elapsed / 1e6


def bench_redaction(quick: bool) -> None:
    """Redactor (trie) against a plain alternation, for several sizes and secret counts."""
    rng = random.Random(7)
    min_time = 0.2 if quick else 0.6
    sizes = {"log line (200 B)": 200, "tool output (16 KiB)": 16 * 1024, "1 MiB": 1 << 20}
    print("redaction throughput, MB/s (trie / naive alternation = ratio)")
    print(f"{'values':>7} {'forms':>6}  " + "  ".join(f"{name:>30}" for name in sizes))
    for count in (1, 5, 50, 500):
        redactor = Redactor()
        values = [secrets.token_urlsafe(30) for _ in range(count)]
        started = time.perf_counter()
        redactor.add_many((v, f"cred-{i}") for i, v in enumerate(values))
        register_ms = (time.perf_counter() - started) * 1000
        snapshot = redactor._snapshot  # the benchmark compares like with like
        assert snapshot is not None
        forms = sorted(snapshot.names, key=len, reverse=True)
        naive = re.compile("|".join(re.escape(form) for form in forms))
        cells: list[str] = []
        for size in sizes.values():
            text = sample_text(size, rng)
            # One value in the text, as when an agent prints its environment.
            text = text[: size // 2] + values[0] + text[size // 2 :]
            ours = _rate(lambda t=text, r=redactor: r.redact(t), len(text), min_time)
            theirs = _rate(lambda t=text, n=naive: n.sub("[REDACTED]", t), len(text), min_time)
            cells.append(f"{ours:9.1f} / {theirs:8.1f} = {ours / theirs:5.2f}x")
        print(f"{count:>7} {len(forms):>6}  " + "  ".join(f"{c:>30}" for c in cells))
        print(f"{'':>15}registering {count} value(s) at once: {register_ms:.1f} ms")


async def _timed(label: str, count: int, op: Callable[[int], Awaitable[object]]) -> None:
    started = time.perf_counter()
    for i in range(count):
        await op(i)
    elapsed = time.perf_counter() - started
    print(f"  {label:<32} {count / elapsed:9.0f} ops/s  ({elapsed / count * 1e3:6.2f} ms each)")


async def bench_store(db: Database, label: str, quick: bool) -> None:
    """Operation rates and a rotation on one database."""
    count = 100 if quick else 400
    rotate_count = 200 if quick else 1000
    await db.open()
    try:
        await migrate(db)
        old = MasterKey.generate()
        store = open_credential_store(db, KeyRing([old], source="bench"))
        print(f"store on {label}")
        await _timed("put", count, lambda i: store.put(f"c-{i}", Secret(f"value-{i}-xxxxxxxx")))
        await _timed("get", count, lambda i: store.get(f"c-{i}"))
        await _timed("get + use record", count, lambda i: store.get(f"c-{i}", task_id=f"t-{i}"))
        mapping = {f"VAR_{j}": f"c-{j}" for j in range(5)}
        await _timed(
            "resolve 5 + use records",
            count,
            lambda i: store.resolve(mapping, project="myapp", task_id=f"t-{i}"),
        )
        await _timed("list (all)", max(count // 10, 10), lambda _i: store.list())
        for i in range(count, rotate_count):
            await store.put(f"c-{i}", Secret(f"value-{i}-xxxxxxxx"))
        new = MasterKey.generate()
        rotating = open_credential_store(db, KeyRing([new, old], source="bench"))
        started = time.perf_counter()
        report = await rotating.rotate_key()
        elapsed = time.perf_counter() - started
        print(
            f"  rotate-key over {report.re_encrypted} credentials: {elapsed:.2f} s "
            f"({report.re_encrypted / elapsed:.0f} credentials/s)"
        )
    finally:
        await db.aclose()


@asynccontextmanager
async def _pg_database(server_url: str) -> AsyncIterator[str]:
    import psycopg

    name = f"forgeline_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    try:
        yield f"{server_url.rpartition('/')[0]}/{name}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


async def main() -> None:
    """Parse arguments and run every benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--pg", help="PostgreSQL server URL (a throwaway database is made)")
    args = parser.parse_args()
    bench_redaction(args.quick)
    print()
    with tempfile.TemporaryDirectory() as tmp:
        await bench_store(SqliteDatabase(Path(tmp) / "bench.db"), "SQLite", args.quick)
    pg = args.pg or os.environ.get(
        "FORGELINE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
    print()
    async with _pg_database(pg) as url:
        await bench_store(PostgresDatabase(url), "PostgreSQL", args.quick)


if __name__ == "__main__":
    asyncio.run(main())
