"""The per-project queue cap holds exactly under concurrent submits: through two real
`forgeline serve` processes on one PostgreSQL database, and through one server on SQLite.
Exactly the cap is queued, every other submit gets 429, nothing is lost or doubled, and a
replay of an accepted request still gets its task."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import httpx
import psycopg
import pytest

from forgeline.domain.task import TaskStatus
from tests.conftest import free_port
from tests.support.forgeline_server import running_forgeline, server_settings
from tests.support.serve_process import forgeline_env, serving

CAP = 20
SUBMITS = 60


async def _flood(clients: Sequence[httpx.AsyncClient]) -> dict[str, httpx.Response]:
    """``SUBMITS`` builds of project ``app`` at once, spread over ``clients``; by key."""
    keys = [f"key-{i}" for i in range(SUBMITS)]
    responses = await asyncio.gather(
        *(
            clients[i % len(clients)].post(
                "/project/app/build",
                json={"prompt": f"build {key}"},
                headers={"Idempotency-Key": key},
            )
            for i, key in enumerate(keys)
        )
    )
    return dict(zip(keys, responses, strict=True))


async def _check(
    client: httpx.AsyncClient, by_key: dict[str, httpx.Response], stored: set[str]
) -> None:
    """Exactly ``CAP`` accepted, the rest 429, the accepted ones are exactly what is stored;
    replays answer as before."""
    assert Counter(r.status_code for r in by_key.values()) == {202: CAP, 429: SUBMITS - CAP}
    accepted = {k: r.json()["task_id"] for k, r in by_key.items() if r.status_code == 202}
    assert set(accepted.values()) == stored
    assert len(stored) == CAP
    for r in by_key.values():
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "capacity"
    # A retry of an accepted request gets its task even though the project is full; a
    # retry of a refused one is still refused.
    key, task_id = next(iter(accepted.items()))
    replay = await client.post(
        "/project/app/build", json={"prompt": f"build {key}"}, headers={"Idempotency-Key": key}
    )
    assert replay.status_code == 200
    assert replay.json()["task_id"] == task_id
    refused = next(k for k, r in by_key.items() if r.status_code == 429)
    again = await client.post(
        "/project/app/build",
        json={"prompt": f"build {refused}"},
        headers={"Idempotency-Key": refused},
    )
    assert again.status_code == 429


@pytest.mark.postgres
@pytest.mark.slow
async def test_cap_holds_across_two_serve_processes(tmp_path: Path, pg_url: str) -> None:
    """Two `forgeline serve` processes on one PostgreSQL: 60 concurrent submits, cap 20."""
    env = forgeline_env(
        database_url=pg_url,
        max_queued_per_project=str(CAP),
        git_base_url=str(tmp_path / "git"),
    )
    with contextlib.ExitStack() as stack:
        bases = [
            stack.enter_context(
                serving(env, tmp_path / name, free_port(), tmp_path / f"{name}.log")
            )
            for name in ("api1", "api2")
        ]
        # The first server made the admin token; it is valid on both (one database).
        token = (tmp_path / "api1" / "admin.token").read_text().strip()
        async with contextlib.AsyncExitStack() as clients_stack:
            clients = [
                await clients_stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=base,
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=60,
                    )
                )
                for base in bases
            ]
            assert (await clients[0].post("/projects", json={"name": "app"})).status_code == 201
            by_key = await _flood(clients)
            with psycopg.connect(pg_url) as conn:
                rows = conn.execute("select id from tasks where concurrency_key = 'app'").fetchall()
            await _check(clients[1], by_key, {row[0] for row in rows})


async def test_cap_holds_on_sqlite(tmp_path: Path, claude_bin: Path) -> None:
    """One server on SQLite: 60 concurrent submits, cap 20."""
    settings = server_settings(tmp_path / "data", claude_bin, workers=0, max_queued_per_project=CAP)
    async with running_forgeline(settings) as api:
        await api.create_project("app")
        by_key = await _flood([api.client])
        stored = await api.container.queue.list(concurrency_key="app")
        assert all(t.status is TaskStatus.QUEUED for t in stored)
        await _check(api.client, by_key, {t.id for t in stored})
