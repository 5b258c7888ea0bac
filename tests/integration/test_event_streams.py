"""Event streams over HTTP at scale: many watchers, slow clients dropped and resumed (the
raw SSE and the CLI), and PostgreSQL outages (listener lost, database restarted) that
lose or double no event."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from forgeline.adapters.queue.postgres import PostgresWorkQueue
from forgeline.adapters.sql.database import PostgresDatabase
from forgeline.adapters.sql.migrate import migrate
from forgeline.adapters.store import build_store
from forgeline.domain import AgentEvent, MessageData
from forgeline.domain.agent import AgentResult, RunStatus
from forgeline.ports.store import Store
from forgeline.services.events import EventHub, HubConfig
from tests.conftest import ROOT
from tests.integration.test_opencode import wait_until
from tests.support.forgeline_server import Running, running_forgeline, server_settings
from tests.support.pg_backends import terminate_backends
from tests.support.serve_process import forgeline_env
from tests.support.tcp_proxy import TcpProxy


def msg(text: str) -> AgentEvent:
    """A message event."""
    return AgentEvent(data=MessageData(role="assistant", text=text), provider="claude-code")


RESULT = AgentEvent(data=AgentResult(status=RunStatus.SUCCEEDED, text="done"), provider="x")


@asynccontextmanager
async def serving(tmp_path: Path, claude_bin: Path, **overrides: Any) -> AsyncIterator[Running]:
    """An API-only server (no workers: the test writes the events)."""
    settings = server_settings(tmp_path / "data", claude_bin, workers=0, **overrides)
    async with running_forgeline(settings) as running:
        yield running


async def new_task(running: Running) -> str:
    """A queued task (nothing runs it) to write events for."""
    return (await running.container.queue.enqueue("probe", {})).task.id


@dataclass
class Followed:
    """What a resuming follower saw."""

    seqs: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    connections: int = 0
    drops: int = 0

    def exact(self, last: int) -> None:
        """Every event from 1 to ``last``, once each, ``result`` last."""
        assert self.seqs == list(range(1, last + 1))
        assert self.types[-1] == "result"


async def follow(client: httpx.AsyncClient, task_id: str) -> Followed:
    """Follow a task's stream to its ``result`` as a client should: reconnect with
    ``Last-Event-ID`` after a drop, a broken stream or an error answer (503 while the
    database is away)."""
    seen = Followed()
    while True:
        headers = {"Last-Event-ID": str(seen.seqs[-1])} if seen.seqs else {}
        seen.connections += 1
        try:
            async with client.stream(
                "GET", f"/tasks/{task_id}/events", headers=headers
            ) as response:
                if response.status_code != 200:
                    await asyncio.sleep(0.1)
                    continue
                async for line in response.aiter_lines():
                    if line == "event: dropped":
                        seen.drops += 1
                    elif line.startswith("data: ") and '"seq"' in line:
                        event = json.loads(line[6:])
                        seen.seqs.append(event["seq"])
                        seen.types.append(event["type"])
                        if event["type"] == "result":
                            return seen
        except httpx.HTTPError:
            await asyncio.sleep(0.1)


def client_of(running: Running) -> httpx.AsyncClient:
    """A client of the server for many streams at once."""
    return httpx.AsyncClient(
        base_url=running.url,
        headers={"Authorization": f"Bearer {running.token}"},
        timeout=httpx.Timeout(30.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
    )


async def test_many_watchers_over_http(tmp_path: Path, claude_bin: Path) -> None:
    """60 watchers of one task and 40 spread over 8 others, joining as events flow: each
    stream is every event of its task once, in order, ``result`` last."""
    async with serving(tmp_path, claude_bin) as running, client_of(running) as client:
        store = running.container.store
        tasks = [await new_task(running) for _ in range(9)]
        await store.append_event(tasks[0], msg("before anyone watched"))
        watchers = [asyncio.create_task(follow(client, tasks[0])) for _ in range(60)]
        watchers += [asyncio.create_task(follow(client, t)) for t in tasks[1:] for _ in range(5)]

        async def produce(task: str, n: int) -> None:
            for i in range(n):
                await store.append_event(task, msg(f"{task} {i}"))
                await asyncio.sleep(0.005)
            await store.append_event(task, RESULT)

        await asyncio.wait_for(
            asyncio.gather(produce(tasks[0], 30), *(produce(t, 10) for t in tasks[1:])), 60
        )
        seen = await asyncio.wait_for(asyncio.gather(*watchers), 60)
        for followed in seen[:60]:
            followed.exact(32)
        for followed in seen[60:]:
            followed.exact(11)


async def test_a_client_that_leaves_frees_its_watcher(tmp_path: Path, claude_bin: Path) -> None:
    """Idle streams whose clients hang up are noticed without any event or keep-alive:
    their watchers leave the hub, while a stream still open keeps its own."""
    async with serving(tmp_path, claude_bin) as running:
        task = await new_task(running)
        port = int(running.url.rsplit(":", 1)[1])
        socks = [await asyncio.to_thread(raw_sse, port, running.token, task) for _ in range(3)]
        hub = running.container.events
        await wait_until(lambda: hub.watchers == 3, limit_s=10)
        for sock in socks[:2]:
            sock.close()
        await wait_until(lambda: hub.watchers == 1, limit_s=10)
        await running.container.store.append_event(task, RESULT)
        body = (await asyncio.to_thread(read_all, socks[2])).decode()
        assert "event: result" in body
        assert hub.watchers == 0


def big(i: int) -> AgentEvent:
    """A 64 KiB message: a few of them fill a socket's buffers."""
    return msg(f"{i:04d}" + "x" * 65532)


def raw_sse(port: int, token: str, task_id: str) -> socket.socket:
    """An SSE request on a socket with a tiny receive window, left unread."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /tasks/{task_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode()
    )
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes."""
    chunks = []
    sock.settimeout(30)
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


async def test_slow_client_is_dropped_with_an_end_event_and_resumes(
    tmp_path: Path, claude_bin: Path
) -> None:
    """A client that stops reading is dropped once its buffer is full: its stream ends
    with ``event: dropped`` naming its position (no ``id``), the build's events go on
    being stored, and the client resumes from its Last-Event-ID with the rest, exactly."""
    async with serving(tmp_path, claude_bin, sse_buffer_events=4) as running:
        task = await new_task(running)
        port = int(running.url.rsplit(":", 1)[1])
        sock = await asyncio.to_thread(raw_sse, port, running.token, task)
        await asyncio.sleep(0.2)
        for i in range(200):
            await running.container.store.append_event(task, big(i))
        await running.container.store.append_event(task, RESULT)
        wire = (await asyncio.to_thread(read_all, sock)).decode()
        body = wire.split("\r\n\r\n", 1)[1]
        assert "event: dropped\ndata: " in body
        ids = [int(line[4:]) for line in body.split("\n") if line.startswith("id: ")]
        dropped = json.loads(body.split("event: dropped\ndata: ", 1)[1].split("\n", 1)[0])
        assert ids == list(range(1, len(ids) + 1))
        assert dropped["position"] == ids[-1] < 201
        rest = await running.events(task, last_event_id=ids[-1])
        assert [e["seq"] for e in rest] == list(range(ids[-1] + 1, 202))


async def test_cli_follow_resumes_after_a_drop(tmp_path: Path, claude_bin: Path) -> None:
    """``forgeline task events --json`` whose output is not read falls behind and is
    dropped by the server; it resumes by itself and prints every event once, in order."""
    async with serving(tmp_path, claude_bin, sse_buffer_events=4) as running:
        task = await new_task(running)
        env = forgeline_env(url=running.url, token=running.token)
        cli = subprocess.Popen(  # noqa: ASYNC220 - left unread on purpose, then communicate()
            [sys.executable, "-m", "forgeline", "task", "events", task, "--json"],
            cwd=ROOT,
            env={**env, "FORGELINE_DATA_DIR": str(tmp_path / "cli")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            await asyncio.sleep(1.0)  # connected, then blocked on its full stdout pipe
            for i in range(400):
                await running.container.store.append_event(task, big(i))
            await running.container.store.append_event(task, RESULT)
            out, err = await asyncio.to_thread(cli.communicate, timeout=120)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        assert cli.returncode == 1, err  # the task is not final: it never ran
        events = [json.loads(line) for line in out.splitlines()]
        assert [e["seq"] for e in events] == list(range(1, 402))


# --- PostgreSQL outages ----------------------------------------------------------------------


@asynccontextmanager
async def elsewhere(pg_url: str) -> AsyncIterator[Store]:
    """The store of another process (its own connections, straight to the server)."""
    db = PostgresDatabase(pg_url)
    await db.open()
    try:
        await migrate(db)
        yield build_store(db)
    finally:
        await db.aclose()


async def produce_with_outage(store: Store, task: str, outage: Any, n: int = 60) -> None:
    """``n`` events, the second half and the result written at once after ``outage()``:
    while the API is cut off, so that only its recovery can bring them (no later
    notification will)."""
    for i in range(n):
        if i == n // 2:
            await asyncio.to_thread(outage)
        await store.append_event(task, msg(str(i)))
        if i < n // 2:
            await asyncio.sleep(0.02)
    await store.append_event(task, RESULT)


@asynccontextmanager
async def watching(client: httpx.AsyncClient, task: str, n: int) -> AsyncIterator[Any]:
    """``n`` resuming followers of ``task``; a coroutine that waits for them all (they are
    cancelled if the block ends first)."""
    followers = [asyncio.create_task(follow(client, task)) for _ in range(n)]
    try:
        yield asyncio.wait_for(asyncio.gather(*followers), 60)
    finally:
        for follower in followers:
            follower.cancel()
        await asyncio.wait(followers)


@pytest.mark.postgres
async def test_listener_lost_loses_and_doubles_nothing(
    tmp_path: Path, claude_bin: Path, pg_url: str
) -> None:
    """The API's listening connection is killed while another process writes events:
    every watcher still gets each event once, in order, ``result`` last."""
    killed: list[int] = []
    async with (
        elsewhere(pg_url) as store,
        serving(tmp_path, claude_bin, database_url=pg_url) as running,
        client_of(running) as client,
    ):
        task = await new_task(running)
        async with watching(client, task, 20) as everyone:
            await asyncio.sleep(0.5)
            outage = lambda: killed.append(terminate_backends(pg_url, listeners_only=True))  # noqa: E731
            await asyncio.wait_for(produce_with_outage(store, task, outage), 60)
            for followed in await everyone:
                followed.exact(61)
    assert killed == [1]


@pytest.mark.postgres
async def test_database_restart_loses_and_doubles_nothing(
    tmp_path: Path, claude_bin: Path, pg_url: str
) -> None:
    """Every connection of the API process dies and the database stays unreachable for a
    second (a restart, as the API sees it) while another process writes events: watchers
    that reconnect after a broken stream, and those that kept theirs, get each event
    once, in order, ``result`` last."""
    address = pg_url.rsplit("@", 1)[1].split("/", maxsplit=1)[0]
    proxy = TcpProxy(int(address.rsplit(":", 1)[1]))
    proxied = pg_url.replace(address, f"127.0.0.1:{proxy.port}")
    try:
        async with (
            elsewhere(pg_url) as store,
            serving(tmp_path, claude_bin, database_url=proxied) as running,
            client_of(running) as client,
        ):
            task = await new_task(running)
            async with watching(client, task, 20) as everyone:
                await asyncio.sleep(0.5)
                outage = lambda: proxy.cut(refuse_s=1.0)  # noqa: E731
                await asyncio.wait_for(produce_with_outage(store, task, outage), 60)
                for followed in await everyone:
                    followed.exact(61)
        assert proxy.cuts == 1
    finally:
        proxy.stop()


@pytest.mark.postgres
async def test_events_channel_joins_a_listener_already_up_for_the_queue(pg_url: str) -> None:
    """In ``serve`` the queue starts the process's one listener before any watcher: the
    event store's channel joins it later, and then both the queue's wake-ups and the
    events of another process arrive by notification alone (every poll is an hour away)."""
    db, other = PostgresDatabase(pg_url), PostgresDatabase(pg_url)
    for each in (db, other):
        await each.open()
    await migrate(db)
    queue = PostgresWorkQueue(db, poll_interval_s=3600, listen_poll_interval_s=3600)
    hub = EventHub(build_store(db), queue, HubConfig(poll_s=3600, idle_check_s=3600))
    try:
        task = (await queue.enqueue("probe", {})).task.id
        assert await queue.claim("w", lease_s=30)  # the listener is up, for work and cancels
        stream = hub.stream(task)
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.5)  # the listener reconnects with the events channel
        await build_store(other).append_event(task, msg("from elsewhere"))
        got = await asyncio.wait_for(first, 10)
        assert [e.seq for e in got] == [1]  # type: ignore[union-attr]
        assert await queue.claim("w", lease_s=30) == []  # what came before is seen
        waiting = asyncio.ensure_future(queue.wait_for_work(30))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await PostgresWorkQueue(other).enqueue("probe", {})
        await asyncio.wait_for(waiting, 10)
        await stream.aclose()
    finally:
        await hub.aclose()
        await queue.aclose()
        for each in (db, other):
            await each.aclose()
