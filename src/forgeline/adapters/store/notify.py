"""Telling watchers of appended events: at once in-process, by notification across processes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from forgeline.ports.store import Appended, OnAppend, StoredEvent


class AppendNotifier:
    """The callbacks of one store told of this process's own appends."""

    def __init__(self) -> None:
        self._callbacks: list[OnAppend] = []

    def add(self, on_append: OnAppend) -> Callable[[], None]:
        """Tell ``on_append`` of every later append; returns the function that stops it."""
        self._callbacks.append(on_append)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(on_append)

        return remove

    def appended(self, task_id: str, event: StoredEvent) -> None:
        """``event`` of ``task_id`` was just committed."""
        if self._callbacks:
            word = Appended(task_id, event.seq, event)
            for on_append in list(self._callbacks):
                on_append(word)


class Watch:
    """An :class:`~forgeline.ports.store.AppendWatch`: live while ``is_live()`` says so."""

    def __init__(self, is_live: Callable[[], bool], *closers: Callable[[], None]) -> None:
        self._is_live = is_live
        self._closers = list(closers)

    @property
    def live(self) -> bool:
        """True while other processes' appends are told too."""
        return self._is_live()

    def close(self) -> None:
        """Stop telling; idempotent."""
        closers, self._closers = self._closers, []
        for close in closers:
            close()


def notification(origin: str, seq: int, task_id: str) -> str:
    """The payload of an append's notification: who appended (so a store can skip word of
    its own appends, told in-process already), the position and the task (PostgreSQL caps
    payloads near 8 kB; task ids are short)."""
    return f"{origin} {seq} {task_id}"


def parse_notification(payload: str) -> tuple[str, Appended] | None:
    """The origin and the word of a :func:`notification`; None for any other payload."""
    origin, _, rest = payload.partition(" ")
    seq, _, task_id = rest.partition(" ")
    if not task_id or not seq.isascii() or not seq.isdigit():
        return None
    return origin, Appended(task_id, int(seq))
