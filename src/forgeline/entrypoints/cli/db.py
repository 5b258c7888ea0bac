"""``forgeline db …``: database maintenance."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from forgeline.adapters.sql.migrate import migrate as apply_migrations
from forgeline.entrypoints.cli.common import data_dir_database, fail_on_errors
from forgeline.settings import Settings

app = typer.Typer(help="Database maintenance.", no_args_is_help=True)


@app.command()
def migrate(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Apply pending schema migrations to FORGELINE_DATABASE_URL."""
    settings = Settings()

    async def run() -> list[str]:
        async with data_dir_database(settings, migrate_schema=False) as db:
            return [f"{m.version:04d}_{m.name}" for m in await apply_migrations(db)]

    with fail_on_errors():
        applied = asyncio.run(run())
    if json_out:
        typer.echo(json.dumps({"applied": applied}))
    elif applied:
        for name in applied:
            typer.echo(f"applied {name}")
    else:
        typer.echo("schema is up to date")
