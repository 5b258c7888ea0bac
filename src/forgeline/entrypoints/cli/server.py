"""``forgeline serve``, ``forgeline worker`` and ``forgeline token create``: the commands
that run on the server side, against the database directly."""

from __future__ import annotations

import asyncio
import json
import signal
from types import FrameType
from typing import Annotated, Any

import typer

from forgeline.entrypoints.cli.common import (
    JsonOption,
    configure,
    data_dir_database,
    fail_on_errors,
)
from forgeline.settings import Settings

token_app = typer.Typer(help="API tokens.", no_args_is_help=True)


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (FORGELINE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (FORGELINE_PORT).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="Builds run at once in this process (0: the API alone)."),
    ] = None,
) -> None:
    """Run the HTTP API with in-process workers (embedded defaults: SQLite under ./.forgeline).

    SIGTERM or SIGINT shut it down gracefully (running builds get
    ``FORGELINE_SHUTDOWN_GRACE_S``), and it then exits 0.
    """
    import uvicorn

    from forgeline.adapters.sql.database import sole_server
    from forgeline.bootstrap import check_sandbox
    from forgeline.entrypoints.api.app import create_app

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if workers is not None:
        overrides["workers"] = workers
    settings = Settings(**overrides)
    redactor = configure(settings)
    with fail_on_errors(), sole_server(settings.database_url):
        if settings.workers > 0:
            asyncio.run(check_sandbox(settings))
        uvicorn.run(
            create_app(settings, redactor=redactor),
            host=settings.host,
            port=settings.port,
            log_config=None,
            # The app logs every request itself, with its request id (AccessLog).
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
        )


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    # uvicorn handles SIGTERM and SIGINT itself while it serves, shuts down gracefully,
    # then raises the signal again for the handler it found at start: this one. A shutdown
    # that was asked for is a success (supervisors read death by SIGTERM, -15, as a crash).
    raise SystemExit(0)


def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="Builds run at once.")] = 2,
    name: Annotated[str | None, typer.Option(help="Worker name (default host:pid).")] = None,
) -> None:
    """Run build workers only (scale-out on PostgreSQL); SIGTERM drains them."""
    from forgeline.adapters.sql.database import sole_server
    from forgeline.entrypoints.worker import run_worker

    settings = Settings()
    redactor = configure(settings)
    with fail_on_errors(), sole_server(settings.database_url):
        asyncio.run(run_worker(settings, concurrency=concurrency, name=name, redactor=redactor))


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Who the token is for.")],
    role: Annotated[str, typer.Option(help="admin, or builder (builds and tasks only).")] = "admin",
    project: Annotated[
        list[str] | None,
        typer.Option("--project", help="Limit a builder token to this project (repeatable)."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Create an API token and print it once (only its hash is kept)."""
    from forgeline.adapters.store import build_store
    from forgeline.services.auth import AuthService, Role

    try:
        chosen = Role(role)
    except ValueError as exc:
        raise typer.BadParameter("role must be admin or builder", param_hint="--role") from exc
    settings = Settings()
    configure(settings)

    async def create() -> Any:
        async with data_dir_database(settings, migrate_schema=True) as db:
            return await AuthService(build_store(db)).create(name, chosen, project)

    with fail_on_errors():
        new = asyncio.run(create())
    if json_out:
        record = new.record
        scope = None if record.projects is None else list(record.projects)
        typer.echo(
            json.dumps(
                {
                    "token": new.value,
                    "id": record.id,
                    "name": record.name,
                    "role": record.role,
                    "projects": scope,
                }
            )
        )
    else:
        typer.echo(new.value)
