"""What the CLI modules share: the --json option, logging set-up, error reporting."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from forgeline.domain.errors import ForgelineError
from forgeline.logs import Redactor, configure_logging
from forgeline.settings import Settings

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def configure(settings: Settings) -> Redactor:
    """Structured logs on stderr through a redactor; returns the redactor."""
    redactor = Redactor()
    configure_logging(settings.log_level, settings.log_format, redactor)
    return redactor


@contextmanager
def fail_on_errors() -> Iterator[None]:
    """Turn a ForgelineError into ``error: <message>`` on stderr and exit code 1."""
    try:
        yield
    except ForgelineError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
