"""The API through a PostgreSQL outage, simulated by a TCP proxy in front of the shared
server: while the database is away every request answers 503 with Retry-After at once,
never holding the client for the length of the outage; afterwards everything works again;
connections broken under the pool (a fast restart) give reads no 5xx at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from tests.support.forgeline_server import Running, running_forgeline, server_settings
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

#: A password in the database URL: no answer may ever show it.
PASSWORD = "pg-password-never-shown"
#: How long the test waits for any one answer: far above the database bound (1 s here),
#: far below the length of the outage.
CLIENT_TIMEOUT_S = 15.0


@pytest.fixture
def proxy(pg_url: str) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the test's PostgreSQL server."""
    target = urlsplit(pg_url).port
    assert target is not None
    proxy = TcpProxy(target)
    try:
        yield proxy
    finally:
        proxy.stop()


def _through(pg_url: str, proxy: TcpProxy) -> str:
    """``pg_url`` by way of the proxy, with a password in it (trust auth ignores it)."""
    url = urlsplit(pg_url)
    return url._replace(netloc=f"{url.username}:{PASSWORD}@127.0.0.1:{proxy.port}").geturl()


@pytest.fixture
async def api(
    tmp_path: Path, claude_bin: Path, pg_url: str, proxy: TcpProxy
) -> AsyncIterator[Running]:
    """forgeline without workers on PostgreSQL through the proxy, a project ``app`` made."""
    settings = server_settings(
        tmp_path / "data",
        claude_bin,
        workers=0,
        database_url=_through(pg_url, proxy),
        db_request_timeout_s=1.0,
    )
    async with running_forgeline(settings) as running:
        await running.create_project("app")
        yield running


def _is_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "2"
    error = response.json()["error"]
    assert error["code"] == "storage"
    assert error["retry_after_s"] == 2
    assert PASSWORD not in response.text


async def _wait_until_ready(api: Running) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while (await api.client.get("/readyz")).status_code != 200:
        assert asyncio.get_running_loop().time() < deadline, "the database never came back"
        await asyncio.sleep(0.2)


async def _requests_while_down(api: Running, task_id: str) -> None:
    """Reads and a submit all answer 503 within the client's timeout."""
    for method, path in (
        ("GET", f"/tasks/{task_id}"),
        ("GET", "/projects"),
        ("GET", f"/tasks/{task_id}/events?format=json"),
        ("GET", "/credentials"),
    ):
        _is_unavailable(await api.client.request(method, path, timeout=CLIENT_TIMEOUT_S))
    submit = await api.client.post(
        "/project/app/build",
        json={"prompt": "during the outage"},
        headers={"Idempotency-Key": "outage-1"},
        timeout=CLIENT_TIMEOUT_S,
    )
    _is_unavailable(submit)


async def _works_again(api: Running, task_id: str, pg_url: str) -> None:
    """Once the database is back: reads answer, and the submit retried with its key
    queues exactly one build."""
    await _wait_until_ready(api)
    assert (await api.task(task_id))["status"] == "queued"
    retried = await api.client.post(
        "/project/app/build",
        json={"prompt": "during the outage"},
        headers={"Idempotency-Key": "outage-1"},
    )
    assert retried.status_code in (200, 202), retried.text
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            # Keys are scoped to the caller's token and the project.
            "select id from tasks where idempotency_key like '%:app:outage-1'"
        ).fetchall()
    assert [row[0] for row in rows] == [retried.json()["task_id"]]


async def test_refused_database_answers_503_at_once(
    api: Running, proxy: TcpProxy, pg_url: str
) -> None:
    """Connections dropped and refused (the server is down): 503 with Retry-After, not a
    wait as long as the outage; then the same requests succeed."""
    task_id = await api.build("app", prompt="before the outage")
    proxy.cut(refuse_s=3600)
    await _requests_while_down(api, task_id)
    proxy.allow()
    await _works_again(api, task_id, pg_url)


async def test_silent_database_answers_503_at_once(
    api: Running, proxy: TcpProxy, pg_url: str
) -> None:
    """The network path drops every packet (nothing errors, nothing answers): still 503
    within the bound; then the same requests succeed."""
    task_id = await api.build("app", prompt="before the outage")
    proxy.stall()
    await _requests_while_down(api, task_id)
    proxy.allow()
    await _works_again(api, task_id, pg_url)


async def test_connections_broken_under_the_pool_give_reads_no_5xx(
    api: Running, proxy: TcpProxy
) -> None:
    """Every pooled connection dies at once (a fast restart) while the database itself
    stays reachable: reads retry on fresh connections and never answer 5xx."""
    task_id = await api.build("app", prompt="x")
    await api.client.put("/credentials/api-key", json={"value": "v"})
    reads = [
        f"/tasks/{task_id}",
        "/projects",
        "/projects/app",
        f"/tasks/{task_id}/events?format=json",
        "/credentials",
    ]
    for _ in range(3):
        # Many requests at once: the pool grows to several connections, all then cut.
        warm = await asyncio.gather(*(api.client.get(path) for path in reads * 4))
        assert {r.status_code for r in warm} == {200}
        proxy.cut()
        after = await asyncio.gather(*(api.client.get(path) for path in reads * 4))
        assert [r.status_code for r in after] == [200] * len(after), [
            r.text for r in after if r.status_code != 200
        ]
