"""Shared fixtures: PostgreSQL databases, the pinned agent CLIs, free ports, a fake Woodpecker."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from forgeline.adapters.sql.database import PostgresDatabase
from forgeline.adapters.sql.migrate import migrate
from tests.support.fake_woodpecker import FakeWoodpecker, running_fake

ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = ROOT / "tools" / "node_modules" / ".bin"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The PostgreSQL server of the test run; fails loudly (never skips) when none answers."""
    url = os.environ.get("FORGELINE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL is required and did not answer at {url}: {exc}. "
            "Run the tests through scripts/check, which starts a throwaway cluster.",
            pytrace=False,
        )
    return url


@contextlib.contextmanager
def _scratch_database(server_url: str, template: str | None = None) -> Iterator[str]:
    """The URL of a new database on the test server (a copy of ``template`` if given),
    dropped afterwards."""
    name = f"forgeline_t_{uuid.uuid4().hex[:12]}"
    clause = f' template "{template}"' if template else ""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"{clause}')
    base, _, _ = server_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the test server, dropped afterwards."""
    with _scratch_database(pg_server_url) as url:
        yield url


@pytest.fixture(scope="session")
def pg_template(pg_server_url: str) -> Iterator[str]:
    """The name of a database migrated once for the whole run, which
    :func:`pg_migrated_url` clones: a copy costs a fraction of applying every migration."""
    with _scratch_database(pg_server_url) as url:

        async def migrated() -> None:
            db = PostgresDatabase(url, max_size=1)
            try:
                await migrate(db)
            finally:
                await db.aclose()  # a template must have no connection when it is copied

        # In a thread of its own: this may be set up from inside a running event loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, migrated()).result()
        yield url.rpartition("/")[2]


@pytest.fixture
def pg_migrated_url(pg_server_url: str, pg_template: str) -> Iterator[str]:
    """A fresh database with forgeline's schema (``CREATE DATABASE … TEMPLATE``), dropped
    afterwards."""
    with _scratch_database(pg_server_url, template=pg_template) as url:
        yield url


def _tool(name: str, env_var: str) -> Path:
    configured = os.environ.get(env_var)
    path = Path(configured) if configured else TOOLS_BIN / name
    if not path.exists():
        pytest.fail(
            f"{name} is not installed at {path}; run scripts/setup-tools (scripts/check does)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    """The pinned ``claude`` CLI installed by scripts/setup-tools."""
    return _tool("claude", "FORGELINE_CLAUDE_BIN")


@pytest.fixture(scope="session")
def opencode_bin() -> Path:
    """The pinned ``opencode`` CLI installed by scripts/setup-tools."""
    return _tool("opencode", "FORGELINE_OPENCODE_BIN")


@pytest.fixture
def fake_woodpecker() -> Iterator[FakeWoodpecker]:
    """A fake Woodpecker server on 127.0.0.1 (tests/support/fake_woodpecker.py), stopped
    after the test."""
    yield from running_fake()
