"""``forgeline db …``: database maintenance."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from forgeline.adapters.sql.database import open_database
from forgeline.adapters.sql.migrate import migrate as apply_migrations
from forgeline.settings import Settings

app = typer.Typer(help="Database maintenance.", no_args_is_help=True)


@app.command()
def migrate(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Apply pending schema migrations to FORGELINE_DATABASE_URL."""
    settings = Settings()

    async def run() -> list[str]:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = open_database(settings.database_url)
        try:
            await db.open()
            return [f"{m.version:04d}_{m.name}" for m in await apply_migrations(db)]
        finally:
            await db.aclose()

    applied = asyncio.run(run())
    if json_out:
        typer.echo(json.dumps({"applied": applied}))
    elif applied:
        for name in applied:
            typer.echo(f"applied {name}")
    else:
        typer.echo("schema is up to date")
