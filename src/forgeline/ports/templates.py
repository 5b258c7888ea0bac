"""The TemplateProvider port: project templates and their variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class TemplateVariable:
    """One question a template asks."""

    name: str
    type: str
    help: str | None = None
    default: Any = None
    required: bool = False
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    """A template that can start a project."""

    name: str
    description: str
    variables: tuple[TemplateVariable, ...] = field(default_factory=tuple)


class TemplateProvider(Protocol):
    """Renders project templates; runs no template scripts.

    ``render`` validates ``variables`` first (``TemplateVariablesError`` naming each bad
    one) and writes nothing when they are invalid.
    """

    def list_templates(self) -> list[TemplateInfo]:
        """Every template, by name."""
        ...

    def get_template(self, name: str) -> TemplateInfo:
        """One template, or ``TemplateNotFoundError``."""
        ...

    def render(self, name: str, variables: Mapping[str, Any], dest: Path) -> dict[str, Any]:
        """Render into ``dest``; returns the answers used (defaults filled in)."""
        ...
