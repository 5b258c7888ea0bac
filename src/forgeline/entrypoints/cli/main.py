"""The ``forgeline`` command line (typer). Each command group lives in its own module."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from forgeline import __version__
from forgeline.bootstrap import build_registry
from forgeline.entrypoints.cli import credentials as credentials_cli
from forgeline.entrypoints.cli import db as db_cli
from forgeline.entrypoints.cli.agent_run import agent_app
from forgeline.settings import Settings

app = typer.Typer(
    name="forgeline",
    help="Self-hosted orchestrator for coding agents: prompt in, deployed change out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(agent_app, name="agent")
app.add_typer(db_cli.app, name="db")
app.add_typer(credentials_cli.app, name="credential")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"forgeline {__version__}")
        raise typer.Exit


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """forgeline: queue builds, run coding agents, commit, push, deploy, call back."""


def load_settings() -> Settings:
    """Settings from the environment (and the optional settings file)."""
    return Settings()


@app.command()
def agents(json_out: JsonOption = False) -> None:
    """List the agent providers, the default first, with capabilities and availability."""
    registry = build_registry(load_settings())

    async def gather() -> list[dict[str, Any]]:
        caps = await asyncio.gather(*(agent.capabilities() for agent in registry.agents()))
        default = registry.default_name
        return [
            {
                "name": cap.provider,
                "default": cap.provider == default,
                "available": cap.available,
                "capabilities": cap.to_dict(),
            }
            for cap in caps
        ]

    rows = asyncio.run(gather())
    if json_out:
        typer.echo(json.dumps(rows))
        return
    table = Table("provider", "default", "available", "version", "detail")
    for row in rows:
        caps = row["capabilities"]
        table.add_row(
            row["name"],
            "yes" if row["default"] else "",
            "yes" if row["available"] else "no",
            caps["version"] or "",
            caps["detail"] or "",
        )
    Console().print(table)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (FORGELINE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (FORGELINE_PORT).")] = None,
) -> None:
    """Run the HTTP API on embedded defaults (SQLite under ./.forgeline)."""
    import uvicorn

    from forgeline.entrypoints.api.app import create_app

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = Settings(**overrides)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
    )


from forgeline.entrypoints.cli.templates import templates as _templates  # noqa: E402

app.command("templates")(_templates)


def main() -> None:
    """Console-script entry point."""
    app()
