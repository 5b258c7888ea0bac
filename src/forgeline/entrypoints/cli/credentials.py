"""``forgeline credential …``: write-only secrets from the command line.

These commands talk to the database directly (settings → database → migrations → store),
so they work whether or not a server runs. A value is read from stdin when it is piped,
else from a hidden prompt; never from an argument, where it would land in shell history
and in every ``ps`` listing.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, TypeVar

import typer
from rich.table import Table

from forgeline.domain.clock import format_time
from forgeline.domain.errors import ForgelineError, ValidationError
from forgeline.domain.secrets import Secret
from forgeline.entrypoints.cli.common import console, data_dir_database, echo_error, text
from forgeline.ports.credentials import CredentialStore
from forgeline.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    help="Write-only secrets for builds: set, list, delete, rotate the master key.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ProjectOption = Annotated[
    str | None, typer.Option("--project", "-p", help="Project scope (default: global).")
]


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[CredentialStore]:
    # Imported here: the database and crypto stack load only for credential commands.
    from forgeline.bootstrap import build_credential_store

    async with data_dir_database(settings) as database:
        yield build_credential_store(settings, database)


def _run(action: Callable[[CredentialStore], Awaitable[T]]) -> T:
    """Run ``action`` against the configured store; errors become one line and exit 1."""

    async def main() -> T:
        async with _store(Settings()) as store:
            return await action(store)

    try:
        return asyncio.run(main())
    except ForgelineError as exc:
        # Messages of the error tree name credentials, never values.
        echo_error(exc.message)
        raise typer.Exit(1) from exc


def _read_value(name: str) -> Secret:
    """The value from piped stdin (one trailing newline dropped) or a hidden prompt."""
    if sys.stdin.isatty():
        text = typer.prompt(
            f"Value for {name}", hide_input=True, confirmation_prompt=True, err=True
        )
    else:
        from forgeline.adapters.credentials.base import MAX_VALUE_BYTES

        # Read one byte more than allowed, so an oversized value is refused, not cut.
        text = sys.stdin.read(MAX_VALUE_BYTES + 1)
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
    if not text:
        raise ValidationError("no value given: pipe it on stdin or type it at the prompt")
    return Secret(text, name=name)


def _scope(project: str | None) -> str:
    return f"project {project!r}" if project else "global scope"


@app.command("set", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def set_(
    ctx: typer.Context, name: str, project: ProjectOption = None, json_out: JsonOption = False
) -> None:
    """Store NAME (value from stdin or a hidden prompt; never an argument)."""
    if ctx.args:
        # Extra arguments (or unknown options such as --value=…) are collected rather than
        # left to click, whose "unexpected extra argument" error would print the value
        # back. The value is not repeated here: it is probably a real secret.
        typer.echo(
            "error: a value is never taken as an argument (it would stay in shell history and "
            f"show in `ps`); pipe it: `forgeline credential set {name} < file`, or omit it to "
            "be prompted",
            err=True,
        )
        raise typer.Exit(2)
    try:
        value = _read_value(name)
    except ForgelineError as exc:
        echo_error(exc.message)
        raise typer.Exit(1) from exc
    info = _run(lambda store: store.put(name, value, project=project))
    if json_out:
        typer.echo(json.dumps(info.to_dict()))
    else:
        typer.echo(f"stored credential {info.name!r} ({_scope(info.project)})")


@app.command("list")
def list_(project: ProjectOption = None, json_out: JsonOption = False) -> None:
    """List credentials (names, scope, times; never values).

    With --project: those the project's builds can receive (its own, and the global ones
    it does not override).
    """
    infos = _run(lambda store: store.list(project=project))
    if json_out:
        typer.echo(json.dumps([info.to_dict() for info in infos]))
        return
    table = Table("name", "scope", "created", "updated", "last used")
    for info in infos:
        cells = (
            info.name,
            f"project:{info.project}" if info.project else "global",
            format_time(info.created_at),
            format_time(info.updated_at),
            format_time(info.last_used_at) if info.last_used_at else "never",
        )
        table.add_row(*map(text, cells))
    console().print(table)


@app.command()
def delete(name: str, project: ProjectOption = None, json_out: JsonOption = False) -> None:
    """Delete NAME from exactly this scope (its use records stay)."""
    _run(lambda store: store.delete(name, project=project))
    if json_out:
        typer.echo(json.dumps({"deleted": name, "project": project}))
    else:
        typer.echo(f"deleted credential {name!r} ({_scope(project)})")


@app.command()
def uses(
    name: Annotated[str | None, typer.Option(help="Only this credential.")] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    json_out: JsonOption = False,
) -> None:
    """Show which tasks received which credentials, newest first."""
    found = _run(lambda store: store.uses(name=name, task_id=task, limit=limit))
    if json_out:
        typer.echo(json.dumps([use.to_dict() for use in found]))
        return
    table = Table("used", "name", "scope", "task")
    for use in found:
        scope = f"project:{use.project}" if use.project else "global"
        table.add_row(*map(text, (format_time(use.used_at), use.name, scope, use.task_id)))
    console().print(table)


@app.command("rotate-key")
def rotate_key(json_out: JsonOption = False) -> None:
    """Re-encrypt every credential under a new master key, while everything keeps running.

    With the key file (<data dir>/master.key): a new key is generated, everything is
    re-encrypted, and the file then holds only the new key. With FORGELINE_MASTER_KEY: put
    the new key first (NEW,OLD) on every process, run this, then drop OLD.
    """
    report = _run(lambda store: store.rotate_key())
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
        return
    retired = ", ".join(report.retired_key_ids) or "none"
    typer.echo(
        f"re-encrypted {report.re_encrypted} credential(s) under master key {report.key_id} "
        f"(retired: {retired})"
    )
    for note in report.notes:
        typer.echo(note)
