"""Task event streams for many watchers: one reader per task per process, fanned out in memory.

Every watcher of a task in this process shares one :class:`_Feed`, which learns of new events
from :meth:`~forgeline.ports.store.Store.watch_appends` (this process's appends come with
the event itself; other processes' by notification, read once for all watchers) and pushes
them into each watcher's bounded buffer. An idle watcher costs a future, a timer and nothing
else (its buffer exists only while it holds events): no query, no wake-up until an event or
its keep-alive is due.

- **Exact.** A watcher hands on strictly the event after the last one it handed on: older
  ones in its buffer are skipped, a gap (it joined late, or word of an append was lost) is
  read from the database. Whatever order or repetition wake-ups come in (in-process, by
  notification, after a reconnect, by a poll), a stream is dense, has no duplicate, and
  ends with its ``result``.
- **Bounded.** A watcher whose client reads slower than the build writes fills its buffer of
  :attr:`HubConfig.buffer` events: it is dropped (buffer freed, stream ended with
  :class:`Dropped`) and its client resumes from its position (``Last-Event-ID``). The
  producer never waits for a watcher.
- **Wake-ups.** While the store's watch is ``live`` (PostgreSQL, listener up) a feed waits
  for word and nothing else; otherwise (SQLite, where only another process's appends go
  untold; PostgreSQL while the listener is down) it also polls every
  :attr:`HubConfig.poll_s`.
- **The end.** A stream ends after its ``result``. A task that became final without one (its
  worker died between the two) ends its streams :attr:`HubConfig.final_grace_s` after a
  feed finds it final; quiet feeds look every :attr:`HubConfig.idle_check_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
from collections import deque
from collections.abc import AsyncGenerator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from forgeline.domain.errors import TaskNotFoundError
from forgeline.ports.queue import WorkQueue
from forgeline.ports.store import Appended, AppendWatch, Store, StoredEvent

T = TypeVar("T")
log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class HubConfig:
    """How an :class:`EventHub` paces itself."""

    #: A stream quiet for this long yields a :class:`KeepAlive`.
    keepalive_s: float = 15.0
    #: How often a feed reads while other processes' appends are not told (see module doc).
    poll_s: float = 2.0
    #: How often a quiet feed checks whether its task ended without a ``result``.
    idle_check_s: float = 15.0
    #: How long a final task's ``result`` may take to follow (a worker writes it just after).
    final_grace_s: float = 2.0
    #: Events a watcher may fall behind before it is dropped.
    buffer: int = 256
    #: Events read from the database at once.
    page: int = 500


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Nothing new for :attr:`HubConfig.keepalive_s`; the stream goes on."""


@dataclass(frozen=True, slots=True)
class Dropped:
    """The watcher fell :attr:`HubConfig.buffer` events behind; the stream ends here, and
    resumes after ``position`` (the last event handed on) in a new one."""

    position: int


#: What :meth:`EventHub.stream` yields: new events (in order), a keep-alive, or the drop.
StreamItem = Sequence[StoredEvent] | KeepAlive | Dropped


class _Watcher:
    """One stream's buffer of events pushed by its feed. An idle watcher is a few slots:
    its buffer exists only while it holds events, and it waits on a bare future."""

    __slots__ = ("buffer", "capacity", "dropped", "waiter", "woken")

    def __init__(self, capacity: int) -> None:
        self.buffer: deque[StoredEvent] | None = None
        self.capacity = capacity
        self.dropped = False
        #: Something happened since the stream last looked (events, the end, a position).
        self.woken = False
        self.waiter: asyncio.Future[None] | None = None

    def push(self, events: Sequence[StoredEvent]) -> None:
        """Take ``events``, or be dropped if they do not fit (never waits)."""
        if self.dropped:
            return
        if len(self.buffer or ()) + len(events) > self.capacity:
            self.dropped = True
            self.buffer = None
        else:
            if self.buffer is None:
                self.buffer = deque()
            self.buffer.extend(events)
        self.wake()

    def wake(self) -> None:
        """Tell the stream to look again."""
        self.woken = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self, timeout_s: float) -> bool:
        """Until woken (True) or ``timeout_s`` passed (False)."""
        if self.woken:
            return True
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout_s, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None
        return self.woken


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Feed:
    """The one reader of a task's new events in this process, and its watchers."""

    __slots__ = ("dirty", "ended", "last", "reader", "task_id", "watchers")

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        #: The newest event this feed knows of; None before its first look.
        self.last: int | None = None
        #: No event will follow ``last``.
        self.ended = False
        self.watchers: set[_Watcher] = set()
        #: Set when the task may have events after ``last`` that only a read brings.
        self.dirty = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None

    def publish(self, events: Sequence[StoredEvent]) -> None:
        """Hand the events after ``last`` on to every watcher; the end after a ``result``."""
        events = _through_result(events)
        self.last = events[-1].seq
        self.ended = events[-1].type == "result"
        for watcher in self.watchers:
            watcher.push(events)

    def end(self) -> None:
        """Nothing more will come: every watcher finishes once it has ``last``."""
        self.ended = True
        for watcher in self.watchers:
            watcher.wake()


class EventHub:
    """The event streams of one process (see the module docstring)."""

    def __init__(self, store: Store, queue: WorkQueue, config: HubConfig | None = None) -> None:
        self._store = store
        self._queue = queue
        self.config = config or HubConfig()
        self._feeds: dict[str, _Feed] = {}
        self._watch: asyncio.Task[AppendWatch] | None = None

    @property
    def watchers(self) -> int:
        """How many streams of this process are open."""
        return sum(len(feed.watchers) for feed in self._feeds.values())

    # --- streams -------------------------------------------------------------------------

    async def stream(self, task_id: str, after: int = 0) -> AsyncGenerator[StreamItem, None]:
        """The task's events after position ``after``, in batches, until its ``result``;
        a :class:`KeepAlive` after each quiet :attr:`HubConfig.keepalive_s`; a final
        :class:`Dropped` if this watcher falls too far behind."""
        feed = self._feed(task_id)
        watcher = _Watcher(self.config.buffer)
        feed.watchers.add(watcher)
        position = after
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        try:
            while True:
                if watcher.dropped:
                    yield Dropped(position)
                    return
                watcher.woken = False
                batch: Sequence[StoredEvent] = ()
                if watcher.buffer is not None:
                    batch = _take(watcher.buffer, position)
                    if not watcher.buffer:
                        watcher.buffer = None  # an idle watcher keeps no buffer
                stored = True
                if not batch and feed.last is not None and position < feed.last:
                    # Joined late, or a gap: what the feed passed on before is stored.
                    page = await self._store.list_events(
                        task_id, after_seq=position, limit=self.config.page
                    )
                    batch = _take(deque(page), position)
                    stored = bool(page)
                if batch:
                    batch = _through_result(batch)
                    position = batch[-1].seq
                    quiet_since = loop.time()
                    yield batch
                    if batch[-1].type == "result":
                        return
                    continue
                if feed.ended and feed.last is not None and position >= feed.last:
                    return
                if stored and (watcher.buffer or watcher.woken):
                    continue  # more to take (a read found nothing: wait, never spin)
                left = quiet_since + self.config.keepalive_s - loop.time()
                if not await watcher.wait(max(0.0, left)):
                    quiet_since = loop.time()
                    yield KeepAlive()
        finally:
            self._leave(feed, watcher)

    def _feed(self, task_id: str) -> _Feed:
        feed = self._feeds.get(task_id)
        if feed is None:
            feed = self._feeds[task_id] = _Feed(task_id)
            feed.reader = self._spawn(self._follow(feed), f"forgeline-events-{task_id}")
        return feed

    def _leave(self, feed: _Feed, watcher: _Watcher) -> None:
        feed.watchers.discard(watcher)
        if feed.watchers:
            return
        if self._feeds.get(feed.task_id) is feed:
            del self._feeds[feed.task_id]
        if feed.reader is not None:
            feed.reader.cancel()

    @staticmethod
    def _spawn(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        # A context of its own: the task outlives the request that started it, and must
        # not inherit that request's database time limit or log context.
        return asyncio.create_task(coro, name=name, context=contextvars.Context())

    # --- word of appends -----------------------------------------------------------------

    async def _watching(self) -> AppendWatch:
        """The store's watch, subscribed by the first feed (once per process)."""
        if self._watch is None or (
            self._watch.done() and (self._watch.cancelled() or self._watch.exception())
        ):
            self._watch = self._spawn(
                self._store.watch_appends(self._appended), "forgeline-events-watch"
            )
        return await asyncio.shield(self._watch)

    def _appended(self, word: Appended | None) -> None:
        if word is None:  # word may have been lost: every feed reads
            for each in self._feeds.values():
                each.dirty.set()
            return
        feed = self._feeds.get(word.task_id)
        if feed is None or feed.ended or (feed.last is not None and word.seq <= feed.last):
            return
        if word.event is not None and feed.last is not None and word.seq == feed.last + 1:
            feed.publish((word.event,))  # appended here: no need to read it back
        else:
            feed.dirty.set()

    # --- the reader of a task ------------------------------------------------------------

    async def _follow(self, feed: _Feed) -> None:
        """Read the task's new events on word (or by polling) until it ends or nobody
        watches; a failing database is ridden out (watchers get keep-alives meanwhile)."""
        loop = asyncio.get_running_loop()
        checked = -math.inf
        while not feed.ended:
            try:
                watch = await self._watching()
                if feed.last is None:
                    newest = await self._store.last_event(feed.task_id)
                    if newest is not None and newest.type == "result":
                        feed.last = newest.seq
                        feed.end()
                        return
                    # Appends told while we looked have set ``dirty``: read below.
                    feed.last = newest.seq if newest is not None else 0
                    for watcher in feed.watchers:
                        watcher.wake()  # their position is known now
                if loop.time() - checked >= self.config.idle_check_s:
                    checked = loop.time()
                    await self._end_if_over(feed)
                    continue
                live = watch.live
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(
                        self.config.idle_check_s if live else self.config.poll_s
                    ):
                        await feed.dirty.wait()
                if feed.dirty.is_set() or not live:
                    feed.dirty.clear()
                    if await self._catch_up(feed):
                        checked = loop.time()
            except Exception as exc:  # noqa: BLE001  # the reader must outlive an outage
                log.warning("events.read_failed", task_id=feed.task_id, error=str(exc))
                await asyncio.sleep(self.config.poll_s)
        if self._feeds.get(feed.task_id) is feed:
            del self._feeds[feed.task_id]

    async def _catch_up(self, feed: _Feed) -> bool:
        """Read and publish what is stored after ``feed.last``; True if anything was."""
        found = False
        while not feed.ended and feed.last is not None:
            page = await self._store.list_events(
                feed.task_id, after_seq=feed.last, limit=self.config.page
            )
            fresh = [e for e in page if e.seq > feed.last]  # word may have brought some
            if fresh:
                feed.publish(fresh)
                found = True
            if len(page) < self.config.page:
                break
        return found

    async def _end_if_over(self, feed: _Feed) -> None:
        """End the feed if its task is final and no ``result`` comes within the grace."""
        try:
            final = (await self._queue.get(feed.task_id)).status.is_final
        except TaskNotFoundError:
            final = True
        if not final:
            return
        await asyncio.sleep(self.config.final_grace_s)
        await self._catch_up(feed)
        if not feed.ended:
            feed.end()

    async def aclose(self) -> None:
        """Stop every reader and the store's watch; idempotent."""
        feeds, self._feeds = list(self._feeds.values()), {}
        readers = [f.reader for f in feeds if f.reader is not None]
        for reader in readers:
            reader.cancel()
        if readers:
            await asyncio.wait(readers)
        watch, self._watch = self._watch, None
        if watch is not None:
            if not watch.done():
                watch.cancel()
            await asyncio.wait({watch})
            if not watch.cancelled() and watch.exception() is None:
                watch.result().close()


def _take(events: deque[StoredEvent], position: int) -> list[StoredEvent]:
    """The events that follow ``position`` without a gap, taken from the front of
    ``events``; those at or before ``position`` are dropped on the way."""
    taken: list[StoredEvent] = []
    while events:
        event = events[0]
        if event.seq > position + 1:
            break  # a gap: left for the database to fill
        events.popleft()
        if event.seq == position + 1:
            taken.append(event)
            position += 1
    return taken


def _through_result(batch: Sequence[StoredEvent]) -> Sequence[StoredEvent]:
    """``batch`` up to its ``result`` (nothing is ever handed on after one)."""
    for i, event in enumerate(batch):
        if event.type == "result":
            return batch[: i + 1]
    return batch
