"""What the CLI modules share: the --json option, logging set-up, error reporting, and the
one way untrusted text reaches the terminal.

Task events, agent output, error messages, template descriptions: much of what the CLI
shows was written by someone else. It goes through :func:`clean` (plain output) or
:func:`text` (rich output), and every rich console comes from :func:`console`, so none of
it is ever read as rich markup or acted on by the terminal as a control sequence.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.text import Text

from forgeline.domain.errors import ForgelineError
from forgeline.logs import Redactor, configure_logging
from forgeline.settings import Settings

if TYPE_CHECKING:
    from forgeline.adapters.sql.database import Database
    from forgeline.services.registry import ProviderRegistry

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

#: What a terminal acts on instead of showing: C0 controls but tab and newline (ESC starts
#: colour, cursor, title, clipboard and hyperlink sequences; CR and BS overwrite), DEL, C1
#: controls, and the bidirectional overrides that make text read other than it is stored.
_UNSHOWABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(value: object) -> str:
    """``str(value)`` safe to print: what a terminal would act on is shown as a Python
    escape (``\\x1b``, ``\\r``, ``\\u202e``) instead; tab and newline stay."""
    return _UNSHOWABLE.sub(
        lambda match: match.group().encode("unicode_escape").decode("ascii"), str(value)
    )


def text(value: object, style: str = "") -> Text:
    """``value`` for rich output: :func:`clean`, as a ``Text``, which rich shows as it is
    (``[bold]`` or ``[/x]`` in it are characters, not markup)."""
    return Text(clean(value), style=style)


def console(*, stderr: bool = False) -> Console:
    """A rich console for the CLI. It is handed :func:`text` objects; markup, emoji codes and
    highlighting are off too, so a plain string that slips through stays literal."""
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False)


def configure(settings: Settings) -> Redactor:
    """Structured logs on stderr through a redactor; returns the redactor."""
    redactor = Redactor()
    configure_logging(settings.log_level, settings.log_format, redactor)
    return redactor


@asynccontextmanager
async def agent_registry(settings: Settings) -> AsyncIterator[ProviderRegistry]:
    """The agent providers of ``settings``, every one closed when the block is left, however
    it is left: an ``opencode serve`` started for a run must not outlive the command."""
    # Imported here: only the commands that use agents load the adapters.
    from forgeline.bootstrap import build_registry

    registry = build_registry(settings)
    try:
        yield registry
    finally:
        await registry.aclose()


@asynccontextmanager
async def data_dir_database(
    settings: Settings, *, migrate_schema: bool | None = None
) -> AsyncIterator[Database]:
    """The database of an existing data dir, for a command that works on it directly. The
    command says on stderr which data dir it uses, and refuses (``ConfigurationError``)
    one that does not exist rather than make an empty one where it happens to run."""
    from forgeline.bootstrap import open_migrated_database

    typer.echo(f"data dir: {settings.data_dir}", err=True)
    async with open_migrated_database(
        settings, migrate_schema=migrate_schema, create=False
    ) as database:
        yield database


def echo_error(message: str) -> None:
    """``error: <message>`` on stderr (messages may quote untrusted input: cleaned)."""
    typer.echo(f"error: {clean(message)}", err=True)


@contextmanager
def fail_on_errors() -> Iterator[None]:
    """Turn a ForgelineError into ``error: <message>`` on stderr and exit code 1."""
    try:
        yield
    except ForgelineError as exc:
        echo_error(exc.message)
        sys.exit(1)
