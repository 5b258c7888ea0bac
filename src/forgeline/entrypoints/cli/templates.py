"""``forgeline templates``: the project templates and the variables each one asks."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from forgeline.bootstrap import build_templates
from forgeline.entrypoints.cli.common import console, text
from forgeline.ports.templates import TemplateInfo
from forgeline.settings import Settings


def _describe(variable: dict[str, Any]) -> str:
    parts = [variable["type"]]
    if variable["required"]:
        parts.append("required")
    elif variable["default"] not in (None, ""):
        parts.append(f"default {variable['default']!r}")
    if variable["choices"]:
        parts.append("one of " + ", ".join(str(c) for c in variable["choices"]))
    return "; ".join(parts)


def render_table(templates: list[TemplateInfo]) -> Table:
    """A table of templates and their variables, for people (templates may come from
    anywhere on ``FORGELINE_TEMPLATE_PATH``: their texts are shown as plain text)."""
    table = Table("template", "variable", "type / default", "help", show_lines=True)
    for info in templates:
        rows: list[dict[str, Any] | None] = [v.to_dict() for v in info.variables] or [None]
        for index, variable in enumerate(rows):
            first = index == 0
            table.add_row(
                Text.assemble(text(info.name, "bold"), "\n", text(info.description))
                if first
                else Text(),
                text(variable["name"] if variable else ""),
                text(_describe(variable) if variable else ""),
                text((variable["help"] or "") if variable else ""),
            )
    return table


def templates(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List the project templates with the variables each one asks."""
    infos = build_templates(Settings()).list_templates()
    if json_out:
        typer.echo(json.dumps([info.to_dict() for info in infos]))
        return
    console().print(render_table(infos))
