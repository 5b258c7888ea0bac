"""The worker process: build workers (and the callback sender) without the API.

For scale-out on PostgreSQL: run ``forgeline worker`` on as many machines as needed.
SIGTERM or SIGINT stops claiming, lets running builds finish within
``FORGELINE_SHUTDOWN_GRACE_S``, then cancels them and gives their tasks back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import structlog

from forgeline.bootstrap import check_sandbox, open_container
from forgeline.logs import Redactor
from forgeline.settings import Settings

log = structlog.get_logger("forgeline.worker")


async def run_worker(
    settings: Settings,
    *,
    concurrency: int,
    name: str | None = None,
    redactor: Redactor | None = None,
) -> None:
    """Run one worker process until SIGTERM/SIGINT (``redactor``: the logs' own)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await check_sandbox(settings)
        async with open_container(settings, redactor=redactor) as container:
            worker = container.worker(
                name or f"{socket.gethostname()}:{os.getpid()}", concurrency=concurrency
            )
            await container.callbacks.start()
            try:
                await worker.run(stop)
            finally:
                await container.callbacks.stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
