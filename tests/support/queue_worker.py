"""A queue worker process for the multi-process tests: claims, "works", completes.

Prints one JSON object per line on stdout: ``{"event": "claimed", "ids": [...]}`` after
each claim, ``{"event": "completed", "id": ...}`` after each complete that succeeded,
``{"event": "lost", "id": ...}`` when a fenced write was refused, ``{"event": "done"}``
when nothing is queued or running any more. ``--hold`` claims once and then sleeps
(to be killed while holding leases).

Run: ``python -m tests.support.queue_worker URL NAME [options]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from forgeline.adapters.queue import build_queue
from forgeline.adapters.sql.database import open_database
from forgeline.domain.errors import LeaseLostError
from forgeline.domain.task import TaskStatus
from forgeline.logs import Redactor, configure_logging


def emit(**event: object) -> None:
    """One line of JSON on stdout, flushed (the parent reads it live)."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> None:
    """Work until the queue is empty (or hold the first claim forever)."""
    # Logs go to stderr, keeping stdout for the events the parent parses.
    configure_logging("WARNING", "json", Redactor())
    db = open_database(args.url)
    await db.open()
    queue = build_queue(db)
    last_recovery = 0.0
    try:
        emit(event="ready")
        while True:
            if time.monotonic() - last_recovery > args.recover_every:
                await queue.recover_expired()
                last_recovery = time.monotonic()
            leases = await queue.claim(args.name, lease_s=args.lease, limit=args.limit)
            if not leases:
                busy = await queue.count(status=TaskStatus.QUEUED) + await queue.count(
                    status=TaskStatus.RUNNING
                )
                if busy == 0:
                    break
                await queue.wait_for_work(0.2)
                continue
            emit(event="claimed", ids=[lease.task_id for lease in leases])
            if args.hold:
                await asyncio.sleep(3600)
            for lease in leases:
                if args.work_s:
                    await asyncio.sleep(args.work_s)
                try:
                    await queue.complete(lease, {"worker": args.name})
                except LeaseLostError:
                    emit(event="lost", id=lease.task_id)
                    continue
                emit(event="completed", id=lease.task_id)
        emit(event="done")
    finally:
        await queue.aclose()
        await db.aclose()


def main() -> None:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("name")
    parser.add_argument("--limit", type=int, default=1)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--work-s", type=float, default=0.0)
    parser.add_argument("--recover-every", type=float, default=0.5)
    parser.add_argument("--hold", action="store_true")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
