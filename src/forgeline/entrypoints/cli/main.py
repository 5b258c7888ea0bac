"""The ``forgeline`` command line (typer). Each command group lives in its own module."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from forgeline.entrypoints.cli import client, server, version_line
from forgeline.entrypoints.cli import credentials as credentials_cli
from forgeline.entrypoints.cli import db as db_cli
from forgeline.entrypoints.cli.agent_run import agent_app
from forgeline.entrypoints.cli.common import JsonOption, agent_registry, console, text
from forgeline.entrypoints.cli.templates import templates
from forgeline.settings import Settings

app = typer.Typer(
    name="forgeline",
    help="Self-hosted orchestrator for coding agents: prompt in, deployed change out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(server.serve)
app.command()(server.worker)
app.command()(client.build)
app.command("templates")(templates)
app.add_typer(agent_app, name="agent")
app.add_typer(client.project_app, name="project")
app.add_typer(client.task_app, name="task")
app.add_typer(credentials_cli.app, name="credential")
server.token_app.command("list")(client.token_list)
server.token_app.command("revoke")(client.token_revoke)
app.add_typer(server.token_app, name="token")
app.add_typer(db_cli.app, name="db")


def _version(value: bool) -> None:
    if value:
        typer.echo(version_line())
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


@app.command()
def agents(json_out: JsonOption = False) -> None:
    """List the agent providers, the default first, with capabilities and availability."""
    from forgeline.services.registry import describe_agents

    async def describe() -> list[dict[str, Any]]:
        async with agent_registry(Settings()) as registry:
            return await describe_agents(registry)

    rows = asyncio.run(describe())
    if json_out:
        typer.echo(json.dumps(rows))
        return
    table = Table("provider", "default", "available", "version", "detail")
    for row in rows:
        caps = row["capabilities"]
        cells = (
            row["name"],
            "yes" if row["default"] else "",
            "yes" if row["available"] else "no",
            caps["version"] or "",
            caps["detail"] or "",
        )
        table.add_row(*map(text, cells))
    console().print(table)
