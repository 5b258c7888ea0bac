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
from forgeline.logs import Redactor
from forgeline.services.registry import ProviderRegistry
from forgeline.settings import Settings


def build_registry(settings: Settings) -> ProviderRegistry:
    """The agent providers, Claude Code first (the default)."""
    from forgeline.adapters.agents.claude_code import ClaudeCodeAgent
    from forgeline.adapters.agents.opencode import OpenCodeAgent

    registry = ProviderRegistry()
    registry.register(ClaudeCodeAgent(binary=settings.claude_bin))
    registry.register(OpenCodeAgent.from_settings(settings))
    return registry


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
