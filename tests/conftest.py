"""Shared fixtures: PostgreSQL databases, the pinned agent CLIs, free ports, a fake Woodpecker."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

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


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the test server, dropped afterwards."""
    name = f"forgeline_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    base, _, _ = pg_server_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


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
