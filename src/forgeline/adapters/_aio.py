"""Small asyncio helpers shared by the adapters (processes, streams, shutdown)."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


async def finish_despite_cancel(task: asyncio.Task[T]) -> T:
    """Wait for ``task`` to finish even if the caller is cancelled meanwhile.

    Clean-up work (killing a process tree, reaping a child) must not be abandoned halfway
    because the task that asked for it is itself being cancelled: that is how processes get
    left behind. The cancellation is remembered and re-raised once ``task`` is done, so the
    caller's cancellation is delayed (by the clean-up's own bound), never swallowed.
    """
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise  # the clean-up itself was cancelled: nothing left to wait for
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()
