"""The event hub's guarantees, on SQLite and on PostgreSQL: exact replay from any position,
every watcher served by one reader per task, slow watchers dropped and resumable, streams of
tasks that ended without a result closed, other processes' appends delivered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from forgeline.adapters.queue import build_queue
from forgeline.adapters.sql.database import Database
from forgeline.adapters.store import build_store
from forgeline.domain import AgentEvent, MessageData
from forgeline.domain.agent import AgentResult, RunStatus
from forgeline.ports.queue import WorkQueue
from forgeline.ports.store import Store, StoredEvent
from forgeline.services.events import Dropped, EventHub, HubConfig, KeepAlive, StreamItem
from tests.contract.conftest import Target

#: Fast pacing for tests: a poll, an idle check and a grace of a fraction of a second.
FAST = HubConfig(keepalive_s=30, poll_s=0.1, idle_check_s=0.2, final_grace_s=0.2)


class CountingStore:
    """The store, with its event reads counted."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def list_events(
        self, task_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> Sequence[StoredEvent]:
        """Counted."""
        self.reads += 1
        return await self._store.list_events(task_id, after_seq=after_seq, limit=limit)


@dataclass
class Parts:
    """A store, a queue and a hub on one database, and a way to open another "process"."""

    db: Database
    store: CountingStore
    queue: WorkQueue
    make_db: Any
    hubs: list[EventHub] = field(default_factory=list)

    def hub(self, config: HubConfig = FAST) -> EventHub:
        """A hub on these parts (closed at the end of the test)."""
        hub = EventHub(self.store, self.queue, config)
        self.hubs.append(hub)
        return hub

    async def task(self) -> str:
        """A new queued task's id."""
        return (await self.queue.enqueue("probe", {})).task.id


@pytest.fixture
async def parts(target: Target, migrated_db: Database) -> AsyncIterator[Parts]:
    """Migrated parts of each dialect."""
    queue = build_queue(migrated_db)
    built = Parts(migrated_db, CountingStore(build_store(migrated_db)), queue, target.handle)
    try:
        yield built
    finally:
        for hub in built.hubs:
            await hub.aclose()
        await queue.aclose()


def msg(text: str) -> AgentEvent:
    """A message event."""
    return AgentEvent(data=MessageData(role="assistant", text=text), provider="claude-code")


RESULT = AgentEvent(data=AgentResult(status=RunStatus.SUCCEEDED, text="done"), provider="x")


@dataclass
class Seen:
    """What one stream handed on."""

    seqs: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    keepalives: int = 0
    dropped: int | None = None


async def collect(stream: AsyncIterator[StreamItem], seen: Seen | None = None) -> Seen:
    """Everything a stream yields, to its end."""
    seen = seen or Seen()
    async for item in stream:
        if isinstance(item, KeepAlive):
            seen.keepalives += 1
        elif isinstance(item, Dropped):
            seen.dropped = item.position
        else:
            seen.seqs += [e.seq for e in item]
            seen.types += [e.type for e in item]
    return seen


def exact(seen: Seen, first: int, last: int) -> None:
    """``seen`` is every event from ``first`` to ``last``, once each, ``result`` last."""
    assert seen.seqs == list(range(first, last + 1))
    assert seen.types[-1] == "result"
    assert "result" not in seen.types[:-1]


async def test_replay_from_every_position_is_exact(parts: Parts) -> None:
    """From any position of a finished task: the events after it, once each, ``result``
    last; from the ``result`` itself or past it, an empty stream that ends at once."""
    task = await parts.task()
    for i in range(12):
        await parts.store.append_event(task, msg(str(i)))
    await parts.store.append_event(task, RESULT)
    hub = parts.hub()
    for after in range(13):
        exact(await asyncio.wait_for(collect(hub.stream(task, after)), 10), after + 1, 13)
    for after in (13, 99):
        seen = await asyncio.wait_for(collect(hub.stream(task, after)), 10)
        assert seen.seqs == []


async def test_many_watchers_on_one_task_and_on_many(parts: Parts) -> None:
    """Watchers joining before, during and after the events, on one busy task and on
    many: each gets its events exactly, from its own position, ``result`` last."""
    hub = parts.hub()
    tasks = [await parts.task() for _ in range(8)]
    busy = tasks[0]
    for i in range(5):
        await parts.store.append_event(busy, msg(f"early {i}"))
    early = [asyncio.create_task(collect(hub.stream(busy, after % 6))) for after in range(60)]
    spread = [asyncio.create_task(collect(hub.stream(t))) for t in tasks[1:] for _ in range(10)]

    async def produce(task: str, n: int) -> None:
        for i in range(n):
            await parts.store.append_event(task, msg(f"{task} {i}"))
            await asyncio.sleep(0)
        await parts.store.append_event(task, RESULT)

    producing = [asyncio.create_task(produce(busy, 40))]
    producing += [asyncio.create_task(produce(t, 10)) for t in tasks[1:]]
    await asyncio.sleep(0.01)
    late = [asyncio.create_task(collect(hub.stream(busy, 3))) for _ in range(20)]
    await asyncio.wait_for(asyncio.gather(*producing), 30)
    for i, seen in enumerate(await asyncio.wait_for(asyncio.gather(*early), 30)):
        exact(seen, i % 6 + 1, 46)
    for seen in await asyncio.wait_for(asyncio.gather(*late), 30):
        exact(seen, 4, 46)
    for seen in await asyncio.wait_for(asyncio.gather(*spread), 30):
        exact(seen, 1, 11)


async def test_one_reader_per_task_serves_every_watcher(parts: Parts) -> None:
    """Once caught up, 100 watchers of a task take this process's new events without a
    database read of their own (the appends bring them), and all get every one."""
    hub = parts.hub()
    task = await parts.task()
    await parts.store.append_event(task, msg("first"))
    streams = [hub.stream(task) for _ in range(100)]
    for stream in streams:
        assert [e.seq for e in await anext(stream)] == [1]  # type: ignore[union-attr]
    reads = parts.store.reads
    rest = [asyncio.create_task(collect(s)) for s in streams]
    for i in range(20):
        await parts.store.append_event(task, msg(str(i)))
    await parts.store.append_event(task, RESULT)
    for seen in await asyncio.wait_for(asyncio.gather(*rest), 30):
        exact(seen, 2, 22)
    # One read at most, by the task's one reader: a listener (re)connecting says that
    # notifications may have been missed.
    assert parts.store.reads - reads <= 1


async def test_slow_watcher_is_dropped_and_resumes_exactly(parts: Parts) -> None:
    """A watcher that stops reading is dropped once its buffer is full, without holding
    up the producer or the other watchers; resumed from its position it gets the rest."""
    hub = parts.hub(HubConfig(keepalive_s=30, poll_s=0.1, idle_check_s=0.2, buffer=8))
    task = await parts.task()
    await parts.store.append_event(task, msg("first"))
    slow = hub.stream(task)
    assert [e.seq for e in await anext(slow)] == [1]  # type: ignore[union-attr]
    fast = asyncio.create_task(collect(hub.stream(task)))
    # The slow one reads nothing meanwhile; the producer is never held up by it.
    async with asyncio.timeout(20):
        for i in range(30):
            await parts.store.append_event(task, msg(str(i)))
        await parts.store.append_event(task, RESULT)
    exact(await asyncio.wait_for(fast, 20), 1, 32)
    seen = await asyncio.wait_for(collect(slow), 10)
    assert seen.dropped is not None
    assert seen.seqs == list(range(2, seen.dropped + 1))
    exact(await asyncio.wait_for(collect(hub.stream(task, seen.dropped)), 10), seen.dropped + 1, 32)


async def test_task_final_without_result_ends_its_streams(parts: Parts) -> None:
    """A task made final with no ``result`` (its worker died in between) ends the streams
    of its watchers once the grace is over, whether they were waiting or came later."""
    hub = parts.hub()
    task = await parts.task()
    await parts.store.append_event(task, msg("only"))
    waiting = asyncio.create_task(collect(hub.stream(task)))
    await asyncio.sleep(0.05)
    await parts.queue.cancel(task)
    assert (await asyncio.wait_for(waiting, 10)).seqs == [1]
    assert (await asyncio.wait_for(collect(hub.stream(task)), 10)).seqs == [1]


async def test_quiet_stream_keeps_alive(parts: Parts) -> None:
    """A stream with nothing new yields a keep-alive each quiet period, and goes on."""
    hub = parts.hub(HubConfig(keepalive_s=0.05, poll_s=0.1, idle_check_s=30))
    task = await parts.task()
    stream = hub.stream(task)
    assert isinstance(await anext(stream), KeepAlive)
    assert isinstance(await anext(stream), KeepAlive)
    await parts.store.append_event(task, RESULT)
    seen = await asyncio.wait_for(collect(stream), 10)
    assert seen.seqs == [1]


async def test_events_appended_by_another_process_arrive(parts: Parts) -> None:
    """Appends through another database handle (another process: a notification on
    PostgreSQL, a poll on SQLite) reach every watcher, exactly."""
    hub = parts.hub()
    task = await parts.task()
    watchers = [asyncio.create_task(collect(hub.stream(task))) for _ in range(20)]
    other = parts.make_db()
    await other.open()
    try:
        elsewhere = build_store(other)
        for i in range(15):
            await elsewhere.append_event(task, msg(str(i)))
            if i % 5 == 0:
                await asyncio.sleep(0.05)
        await elsewhere.append_event(task, RESULT)
        for seen in await asyncio.wait_for(asyncio.gather(*watchers), 30):
            exact(seen, 1, 16)
    finally:
        await other.aclose()
