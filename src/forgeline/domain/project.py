"""Projects: a named repository that builds run against."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from forgeline.domain.errors import InvalidProjectNameError

#: What a project name looks like (see :func:`validate_project_name`).
PROJECT_NAME_PATTERN = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_NAME = re.compile(PROJECT_NAME_PATTERN)
#: DNS-label length, so a project name can become a subdomain or a Kubernetes name.
MAX_PROJECT_NAME = 63


def validate_project_name(name: str) -> str:
    """Return ``name`` if it is a valid project name, else raise ``InvalidProjectNameError``.

    Lowercase letters, digits and inner hyphens only: no dots, slashes or other path tricks,
    since the name becomes a directory, a git repository and a branch component.
    """
    if not name:
        raise InvalidProjectNameError(name, "must not be empty")
    if len(name) > MAX_PROJECT_NAME:
        raise InvalidProjectNameError(name, f"longer than {MAX_PROJECT_NAME} characters")
    if not _NAME.fullmatch(name):
        raise InvalidProjectNameError(
            name, "use lowercase letters, digits and hyphens, starting and ending alphanumeric"
        )
    return name


@dataclass(frozen=True, slots=True)
class Project:
    """A project: its repository, the template it came from, and what its builds receive.

    ``credentials`` maps environment variable names to credential names
    (``{"ANTHROPIC_API_KEY": "anthropic-key"}``); values never live here.
    ``default_provider`` and ``default_model`` serve builds that name none (else the
    registry's default provider and the agent's own default model).
    """

    name: str
    repo_url: str
    default_branch: str = "main"
    template: str | None = None
    variables: Mapping[str, Any] = field(default_factory=dict)
    credentials: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    state: str = "ready"
    default_provider: str | None = None
    default_model: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def agent_choice(
        self, provider: str | None, model: str | None
    ) -> tuple[str | None, str | None]:
        """The provider and model of a build that asks for these: what it names, else this
        project's defaults; the default model goes with the default provider only. ``None``
        leaves the choice to the registry's default provider and the agent's own model."""
        if provider is None or provider == self.default_provider:
            return provider or self.default_provider, model or self.default_model
        return provider, model
