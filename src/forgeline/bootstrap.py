"""The composition root: the one place that turns settings into wired adapters.

Nothing here runs at import time; entrypoints call :func:`open_container` inside their
lifespan (the API), their main (the worker, the CLI). Tests build a container with any
adapter swapped by passing it to :class:`Container` directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from forgeline.adapters.sql import database
from forgeline.domain.secrets import Secret
from forgeline.logs import Redactor
from forgeline.ports.ci import CIProvider
from forgeline.ports.templates import TemplateProvider
from forgeline.services.registry import ProviderRegistry
from forgeline.settings import Settings


def build_registry(settings: Settings) -> ProviderRegistry:
    """The agent providers, Claude Code first (the default)."""
    from forgeline.adapters.agents.claude_code import ClaudeCodeAgent
    from forgeline.adapters.agents.opencode import OpenCodeAgent

    registry = ProviderRegistry()
    registry.register(ClaudeCodeAgent(binary=settings.claude_bin))
    registry.register(OpenCodeAgent(binary=settings.opencode_bin))
    return registry


def build_templates(settings: Settings) -> TemplateProvider:
    """The template provider: folders of ``FORGELINE_TEMPLATE_PATH``, then the built-ins."""
    from forgeline.adapters.templates import CopierTemplateProvider

    return CopierTemplateProvider(settings.template_path)


def build_ci(settings: Settings, token: Secret | None) -> CIProvider | None:
    """The Woodpecker client, or ``None`` when ``FORGELINE_WOODPECKER_URL`` is unset (no CI
    step). ``token`` comes from the credential store (``settings.woodpecker_token_credential``)."""
    if not settings.woodpecker_url:
        return None
    if token is None:
        from forgeline.domain.errors import ConfigurationError

        raise ConfigurationError(
            "FORGELINE_WOODPECKER_URL is set but the credential "
            f"{settings.woodpecker_token_credential!r} holding its token is missing"
        )
    from forgeline.adapters.ci.woodpecker import WoodpeckerClient

    return WoodpeckerClient(
        settings.woodpecker_url, token, poll_interval_s=settings.woodpecker_poll_interval_s
    )


@dataclass
class Container:
    """Everything an entrypoint needs, built from one :class:`Settings`."""

    settings: Settings
    registry: ProviderRegistry
    redactor: Redactor = field(default_factory=Redactor)

    async def ping_database(self) -> None:
        """Raise ``StorageError`` unless the database answers (readiness)."""
        await database.ping(self.settings.database_url)

    async def aclose(self) -> None:
        """Release every adapter's resources; idempotent."""
        for agent in self.registry.agents():
            await agent.aclose()


@asynccontextmanager
async def open_container(settings: Settings) -> AsyncIterator[Container]:
    """Build the container, prepare the data directory, and close everything on exit."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    container = Container(settings=settings, registry=build_registry(settings))
    try:
        yield container
    finally:
        await container.aclose()
