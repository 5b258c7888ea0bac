"""The API process of ``bench.events``, and the event emitter of its builds.

As a server (the default) it is ``forgeline serve --workers 0`` (uvicorn with its default
loop and HTTP implementation, as ``serve`` runs it) plus a line protocol on stdin: it
prints one JSON line when ready, then answers each command with one JSON line:

- ``tasks B``: B new running-looking tasks (queued; nothing runs them); their ids.
- ``emit RATE SECONDS``: append events at RATE per second in total, round robin over the
  tasks, for SECONDS, in this process (on SQLite a build's events are written by the
  process that serves, the only one the database admits); each event's text is the
  ``time.monotonic()`` of its append's start, which the watchers subtract from the time
  they receive it (one clock for every process of the machine).
- ``finish``: a ``result`` for each task, which ends every stream.

With ``--emit URL TASKS…`` it is instead another process appending to those tasks of a
PostgreSQL database (a worker elsewhere), reading ``emit RATE SECONDS`` and ``finish``.

It imports whatever ``forgeline`` comes first on ``sys.path``: ``bench.events`` puts an
older commit's source first to measure the old polling path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from typing import Any

import uvicorn

from forgeline.adapters.sql.database import open_database
from forgeline.adapters.sql.migrate import migrate
from forgeline.adapters.store import build_store
from forgeline.domain.agent import AgentEvent, AgentResult, MessageData, RunStatus
from forgeline.entrypoints.api.app import create_app
from forgeline.logs import Redactor, configure_logging
from forgeline.ports.store import Store
from forgeline.settings import Settings


def reply(obj: Any) -> None:
    """One JSON line on stdout."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def lines() -> Any:
    """The lines of stdin, without blocking the loop."""
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        yield line.split()


async def emit(store: Store, tasks: list[str], rate: float, seconds: float) -> int:
    """Append ``rate`` events per second over ``tasks`` for ``seconds``; how many."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = int(rate * seconds)
    for k in range(total):
        delay = start + k / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        event = AgentEvent(
            data=MessageData(role="assistant", text=f"{time.monotonic():.6f}"), provider="bench"
        )
        await store.append_event(tasks[k % len(tasks)], event)
    return total


async def finish(store: Store, tasks: list[str]) -> None:
    """End every task's stream."""
    for task in tasks:
        result = AgentEvent(data=AgentResult(status=RunStatus.SUCCEEDED), provider="bench")
        await store.append_event(task, result)


async def serve(port: int, redactor: Redactor) -> None:
    """The API process (see the module docstring)."""
    settings = Settings(port=port, workers=0)
    app = create_app(settings, redactor=redactor)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.02)
    container = app.state.container
    token = (settings.data_dir / "admin.token").read_text().strip()
    import forgeline

    reply({"pid": os.getpid(), "token": token, "forgeline": forgeline.__file__})
    tasks: list[str] = []
    async for words in lines():
        if words[0] == "tasks":
            tasks = [
                (await container.queue.enqueue("probe", {})).task.id for _ in range(int(words[1]))
            ]
            reply({"tasks": tasks})
        elif words[0] == "emit":
            reply({"emitted": await emit(container.store, tasks, float(words[1]), float(words[2]))})
        elif words[0] == "finish":
            await finish(container.store, tasks)
            reply({"finished": len(tasks)})
    server.should_exit = True
    await serving


async def emitter(url: str, tasks: list[str]) -> None:
    """Another process writing the tasks' events (see the module docstring)."""
    db = open_database(url)
    await db.open()
    try:
        await migrate(db)
        store = build_store(db)
        reply({"pid": os.getpid()})
        async for words in lines():
            if words[0] == "emit":
                reply({"emitted": await emit(store, tasks, float(words[1]), float(words[2]))})
            elif words[0] == "finish":
                await finish(store, tasks)
                reply({"finished": len(tasks)})
    finally:
        await db.aclose()


def main() -> None:
    """Serve, or emit with ``--emit URL TASK…``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--emit", nargs="+", metavar=("URL", "TASK"))
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # As ``serve`` does: logs on stderr at the configured level. Left to structlog's defaults
    # they would go to stdout, a pipe this bench reads only for answers, and a full pipe
    # blocks the whole process (the access log writes a line per stream).
    settings = Settings()
    redactor = Redactor()
    configure_logging(settings.log_level, settings.log_format, redactor)
    if args.emit:
        asyncio.run(emitter(args.emit[0], args.emit[1:]))
    else:
        from uvicorn._compat import asyncio_run

        # As ``forgeline serve`` runs: on uvicorn's own choice of event loop.
        config = uvicorn.Config(app=None, loop="auto", log_config=None)  # type: ignore[arg-type]
        factory = config.get_loop_factory()
        asyncio_run(serve(args.port, redactor), loop_factory=factory)


if __name__ == "__main__":
    main()
