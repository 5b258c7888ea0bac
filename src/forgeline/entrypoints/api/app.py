"""The HTTP API app: the container, the callback sender and in-process workers live in
its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from forgeline import __version__
from forgeline.bootstrap import Container, open_container
from forgeline.entrypoints.api import errors
from forgeline.entrypoints.api.access import AccessLog
from forgeline.entrypoints.api.limits import BodySizeLimit, DatabaseTimeLimit
from forgeline.entrypoints.api.routes import health, router
from forgeline.entrypoints.api.streaming import StreamHandOff
from forgeline.entrypoints.ui import install as install_ui
from forgeline.logs import Redactor
from forgeline.settings import Settings

log = structlog.get_logger("forgeline.api")


@asynccontextmanager
async def running_services(container: Container, workers: int) -> AsyncIterator[None]:
    """Run the callback dispatcher and a worker running up to ``workers`` builds at once
    (none for 0) until the block ends;
    then stop claiming, let builds finish within the grace period, and stop."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    await container.callbacks.start()
    try:
        if workers > 0:
            worker = container.worker(f"{socket.gethostname()}:{os.getpid()}", concurrency=workers)
            tasks.append(asyncio.create_task(worker.run(stop), name="worker"))
            tasks[0].add_done_callback(_report_worker_end)
        yield
    finally:
        stop.set()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await container.callbacks.stop()


def _report_worker_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("api.worker_died", error=str(task.exception()), exc_info=task.exception())


def create_app(
    settings: Settings,
    *,
    container: Container | None = None,
    workers: int | None = None,
    redactor: Redactor | None = None,
) -> FastAPI:
    """The ASGI app. ``container`` lets a test bring its own adapters; up to ``workers``
    (default ``settings.workers``) builds run in-process beside the API; ``redactor`` is
    the one the process's logging filters through."""
    worker_count = settings.workers if workers is None else workers

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            built = (
                container
                if container is not None
                else await stack.enter_async_context(open_container(settings, redactor=redactor))
            )
            app.state.container = built
            app.state.redactor = built.redactor
            token_file = await built.auth.ensure_admin_token(settings.data_dir)
            if token_file is not None:
                built.redactor.add(token_file.read_text().strip(), "admin-token")
                log.warning("api.admin_token_created", path=str(token_file))
            await stack.enter_async_context(running_services(built, worker_count))
            log.info("api.ready", workers=worker_count, database=built.database.dialect)
            yield

    app = FastAPI(
        title="forgeline",
        version=__version__,
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    errors.install(app, [*health.routes, *router.routes])
    app.include_router(health)
    app.include_router(router)
    install_ui(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Outside the route's stack, inside the database time limit (streams read the database).
    app.add_middleware(StreamHandOff)
    app.add_middleware(DatabaseTimeLimit, seconds=settings.db_request_timeout_s)
    # Outermost: it times and logs whatever the others answer (a 413 too).
    app.add_middleware(AccessLog)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, built once. FastAPI adds a 422 in its own error shape to every
    route with parameters; the routes document the 422 they can answer (in the one error
    envelope) themselves, so those guesses go."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            separate_input_output_schemas=False,
        )
        for path_item in document["paths"].values():
            for operation in path_item.values():
                guessed = operation["responses"].get("422", {})
                if "HTTPValidationError" in json.dumps(guessed):
                    del operation["responses"]["422"]
        for name in ("HTTPValidationError", "ValidationError"):
            document["components"]["schemas"].pop(name, None)
        app.openapi_schema = document
    return app.openapi_schema


API_DESCRIPTION = """\
Prompt in, committed and CI-deployed change out.

Every route but `/healthz`, `/readyz` and `/metrics` needs `Authorization: Bearer <token>`.
Errors are `{"error": {"code", "message", "fields"?, "retry_after_s"?}}` with the status
each route documents. Timestamps are RFC 3339 in UTC with milliseconds and `Z`. Lists are
paged: pass a page's `next_cursor` as `cursor` for the next one. Every answer carries an
`X-Request-ID` (the request's own when it sent a sane one), which the server's log names.
"""
