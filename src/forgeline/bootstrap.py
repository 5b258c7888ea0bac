"""The composition root: the one place that turns settings into wired adapters.

Nothing here runs at import time; entrypoints call :func:`open_container` inside their
lifespan (the API), their main (the worker, the CLI). Tests build a container with any
adapter swapped by passing it to :class:`Container` directly.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from forgeline.adapters.sql.database import Database, open_database
from forgeline.adapters.sql.migrate import migrate
from forgeline.domain.secrets import Secret
from forgeline.logs import Redactor
from forgeline.ports.ci import CIProvider
from forgeline.ports.credentials import CredentialStore
from forgeline.ports.templates import TemplateProvider
from forgeline.services.registry import ProviderRegistry
from forgeline.settings import Settings

if TYPE_CHECKING:
    from forgeline.ports.callbacks import CallbackOutbox
    from forgeline.services.callback_policy import CallbackUrlPolicy
    from forgeline.services.callbacks import CallbackDispatcher


def build_registry(settings: Settings) -> ProviderRegistry:
    """The agent providers, Claude Code first (the default)."""
    from forgeline.adapters.agents.claude_code import ClaudeCodeAgent
    from forgeline.adapters.agents.opencode import OpenCodeAgent
    from forgeline.adapters.workspace import build_workspace

    workspace = build_workspace(settings)
    registry = ProviderRegistry()
    registry.register(
        ClaudeCodeAgent(
            workspace=workspace,
            state_dir=settings.claude_state_dir or str(settings.data_dir / "agents" / "claude"),
            binary=settings.claude_bin,
            environ=os.environ,
            permission_mode=settings.claude_permission_mode,
            max_retries=settings.claude_max_retries,
            line_limit=settings.agent_line_limit,
            idle_timeout_s=settings.agent_idle_timeout_s,
            raw_events=settings.debug_raw_events,
        )
    )
    registry.register(OpenCodeAgent(binary=settings.opencode_bin))
    return registry


def build_credential_store(settings: Settings, database: Database) -> CredentialStore:
    """The credential store on ``database``; master key from FORGELINE_MASTER_KEY or the key
    file in the data directory (created owner-only on first run)."""
    from forgeline.adapters.credentials import load_keyring, open_credential_store

    master_key = settings.master_key.get_secret_value() if settings.master_key else None
    return open_credential_store(database, load_keyring(master_key, settings.data_dir))


def build_callback_outbox(database: Database) -> CallbackOutbox:
    """The callback outbox on the process's database."""
    from forgeline.adapters.callbacks.postgres import PostgresCallbackOutbox
    from forgeline.adapters.callbacks.sqlite import SqliteCallbackOutbox
    from forgeline.adapters.sql.database import SqliteDatabase

    if isinstance(database, SqliteDatabase):
        return SqliteCallbackOutbox(database)
    return PostgresCallbackOutbox(database)


def build_callback_policy(settings: Settings) -> CallbackUrlPolicy:
    """The callback URL policy (``FORGELINE_CALLBACK_ALLOWED_HOSTS``)."""
    from forgeline.domain.errors import ConfigurationError
    from forgeline.services.callback_policy import CallbackUrlPolicy

    try:
        return CallbackUrlPolicy(settings.callback_allowed_hosts)
    except ValueError as exc:
        raise ConfigurationError(f"FORGELINE_CALLBACK_ALLOWED_HOSTS: {exc}") from exc


def build_callback_dispatcher(
    settings: Settings, database: Database, redactor: Redactor
) -> CallbackDispatcher:
    """The callback dispatcher (not started), its signing key loaded or generated."""
    from forgeline.services.callbacks import (
        CallbackDispatcher,
        DispatcherConfig,
        ensure_callback_secret,
    )

    configured = settings.callback_secret.get_secret_value() if settings.callback_secret else None
    secret = ensure_callback_secret(settings.data_dir, configured)
    redactor.add(secret.reveal(), "callback-secret")
    config = DispatcherConfig(
        retry_period_s=settings.callback_retry_period_s,
        backoff_base_s=settings.callback_backoff_base_s,
        backoff_cap_s=settings.callback_backoff_cap_s,
        request_timeout_s=settings.callback_timeout_s,
        lease_s=max(60.0, settings.callback_timeout_s * 3),
    )
    return CallbackDispatcher(
        build_callback_outbox(database),
        build_callback_policy(settings),
        secret,
        config=config,
        redactor=redactor,
    )


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
    database: Database
    redactor: Redactor = field(default_factory=Redactor)
    #: Set by :func:`open_container` (after migrations); tests may pass their own.
    credentials: CredentialStore | None = None

    async def ping_database(self) -> None:
        """Raise ``StorageError`` unless the database answers (readiness)."""
        await self.database.ping()

    async def aclose(self) -> None:
        """Release every adapter's resources; idempotent."""
        for agent in self.registry.agents():
            await agent.aclose()
        await self.database.aclose()


@asynccontextmanager
async def open_container(settings: Settings) -> AsyncIterator[Container]:
    """Build the container, prepare the data directory, and close everything on exit."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    database = open_database(settings.database_url)
    await database.open()
    container = Container(settings=settings, registry=build_registry(settings), database=database)
    try:
        if settings.auto_migrate:
            await migrate(database)
        if container.credentials is None:
            container.credentials = build_credential_store(settings, database)
        yield container
    finally:
        await container.aclose()
