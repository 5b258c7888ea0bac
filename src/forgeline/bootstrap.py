"""The composition root: the one place that turns settings into wired adapters.

Nothing here runs at import time; entrypoints call :func:`open_container` inside their
lifespan (the API), their main (the worker, the CLI). Tests build a container with any
adapter swapped by passing it to :class:`Container` directly.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from forgeline.adapters.sql.database import Database, open_database
from forgeline.adapters.sql.migrate import migrate
from forgeline.domain.agent import AgentProvider
from forgeline.domain.errors import CredentialNotFoundError
from forgeline.domain.git import GitAuthor
from forgeline.domain.secrets import Secret
from forgeline.logs import Redactor
from forgeline.ports.agent import CodeAgent
from forgeline.ports.ci import CIProvider
from forgeline.ports.credentials import CredentialStore
from forgeline.ports.templates import TemplateProvider
from forgeline.services.auth import ADMIN_TOKEN_FILE
from forgeline.services.registry import AgentFactory, ProviderRegistry
from forgeline.settings import AcpAgentSpec, Settings

if TYPE_CHECKING:
    from forgeline.adapters.agents.jsonl import JsonLinesAgent
    from forgeline.ports.callbacks import CallbackOutbox
    from forgeline.ports.git import Git
    from forgeline.ports.queue import WorkQueue
    from forgeline.ports.store import Store
    from forgeline.ports.workspace import Workspace
    from forgeline.services.auth import AuthService
    from forgeline.services.builds import BuildService
    from forgeline.services.callback_policy import CallbackUrlPolicy
    from forgeline.services.callbacks import CallbackDispatcher, Observer
    from forgeline.services.credentials import CredentialInjector, CredentialService
    from forgeline.services.events import EventHub
    from forgeline.services.metrics import Metrics
    from forgeline.services.projects import ProjectService
    from forgeline.services.sessions import SessionService
    from forgeline.services.worker import Worker


def build_registry(
    settings: Settings,
    workspace: Workspace | None = None,
    *,
    opencode_password: Secret | None = None,
) -> ProviderRegistry:
    """The agent providers, Claude Code first (the default), then OpenCode, Codex, Gemini CLI,
    Qwen Code and each ACP agent of ``FORGELINE_ACP_AGENTS`` in its order, running in
    ``workspace`` (default: the sandbox,
    :func:`~forgeline.adapters.workspace.build_agent_workspace`). ``opencode_password`` is
    the password of the server at ``FORGELINE_OPENCODE_URL`` (a credential), when one is
    set."""
    from forgeline.adapters.agents.pricing import load_prices
    from forgeline.adapters.workspace import build_agent_workspace

    agent_workspace = workspace or build_agent_workspace(settings)
    # Read now: a bad FORGELINE_PRICES is a start-up error, not the first build's failure.
    prices = load_prices(settings.prices)
    sandboxed = settings.workspace == "local" and settings.sandbox == "bwrap"

    # Each adapter is imported when its provider is first used (see ProviderRegistry).
    def claude_code() -> CodeAgent:
        from forgeline.adapters.agents.claude_code import ClaudeCodeAgent

        return ClaudeCodeAgent(
            workspace=agent_workspace,
            state_dir=settings.claude_state_dir or str(settings.data_dir / "agents" / "claude"),
            binary=settings.claude_bin,
            environ=os.environ,
            permission_mode=settings.claude_permission_mode,
            max_retries=settings.claude_max_retries,
            line_limit=settings.agent_line_limit,
            idle_timeout_s=settings.agent_idle_timeout_s,
            raw_events=settings.debug_raw_events,
            # In the sandbox the CLI is an unprivileged user; elsewhere it may be root.
            runs_as_root=not sandboxed and (settings.workspace != "local" or os.geteuid() == 0),
        )

    def opencode() -> CodeAgent:
        from forgeline.adapters.agents.opencode import OpenCodeAgent

        return OpenCodeAgent.from_settings(settings, agent_workspace, password=opencode_password)

    def native(agent_class: type[JsonLinesAgent], binary: str) -> CodeAgent:
        return agent_class(
            workspace=agent_workspace,
            state_dir=str(settings.data_dir / "agents" / agent_class.label),
            binary=binary,
            environ=os.environ,
            max_retries=settings.cli_max_retries,
            line_limit=settings.agent_line_limit,
            idle_timeout_s=settings.agent_idle_timeout_s,
            raw_events=settings.debug_raw_events,
            prices=prices,
        )

    def codex() -> CodeAgent:
        from forgeline.adapters.agents.codex import CodexAgent

        return native(CodexAgent, settings.codex_bin)

    def gemini() -> CodeAgent:
        from forgeline.adapters.agents.gemini import GeminiAgent

        return native(GeminiAgent, settings.gemini_bin)

    def qwen() -> CodeAgent:
        from forgeline.adapters.agents.qwen import QwenAgent

        return native(QwenAgent, settings.qwen_bin)

    registry = ProviderRegistry()
    registry.register_factory(AgentProvider.CLAUDE_CODE.value, claude_code)
    registry.register_factory(AgentProvider.OPENCODE.value, opencode)
    registry.register_factory(AgentProvider.CODEX.value, codex)
    registry.register_factory(AgentProvider.GEMINI.value, gemini)
    registry.register_factory(AgentProvider.QWEN.value, qwen)

    def acp(name: str, spec: AcpAgentSpec) -> AgentFactory:
        def build() -> CodeAgent:
            from forgeline.adapters.agents.acp import AcpAgent

            return AcpAgent(
                name=name,
                command=spec.command,
                workspace=agent_workspace,
                state_dir=str(settings.data_dir / "agents" / "acp" / name),
                environ=os.environ,
                pass_env=spec.env,
                permission_mode=settings.acp_permission_mode,
                line_limit=settings.agent_line_limit,
                idle_timeout_s=settings.agent_idle_timeout_s,
            )

        return build

    for name, spec in settings.acp_agents.items():
        registry.register_factory(name, acp(name, spec))
    return registry


async def check_sandbox(settings: Settings) -> None:
    """Before a process runs agents: ``ConfigurationError`` (naming the fix) when the
    sandbox cannot start here; never a silent fallback. Without one
    (``FORGELINE_SANDBOX=none``, an explicit choice) a warning is logged."""
    from forgeline.adapters.workspace import build_agent_workspace
    from forgeline.adapters.workspace.sandbox import BubblewrapWorkspace

    workspace = build_agent_workspace(settings)
    if isinstance(workspace, BubblewrapWorkspace):
        await workspace.check()
    elif settings.workspace == "local":
        structlog.get_logger("forgeline").warning(
            "sandbox.disabled",
            detail="FORGELINE_SANDBOX=none: agents run unconfined, with forgeline's powers",
        )


def build_credential_store(
    settings: Settings, database: Database, redactor: Redactor | None = None
) -> CredentialStore:
    """The credential store on ``database``; master key from FORGELINE_MASTER_KEY or the key
    file in the data directory (created owner-only on first run), masked by ``redactor``."""
    from forgeline.adapters.credentials import load_keyring, open_credential_store

    master_key = settings.master_key.get_secret_value() if settings.master_key else None
    keyring = load_keyring(master_key, settings.data_dir)
    if redactor is not None:
        redactor.add_many(
            (form, "master-key")
            for key in keyring.keys
            for form in (key.encoded(), base64.urlsafe_b64encode(key.material).decode())
        )
        if master_key:
            redactor.add(master_key, "master-key")
    return open_credential_store(database, keyring)


async def mask_platform_secrets(
    settings: Settings, credentials: CredentialStore, redactor: Redactor
) -> None:
    """Mask, from start-up on, every secret this process could meet in an agent's output:
    each stored credential of every scope and the admin token file's value (the master key
    and the callback key are masked where they are loaded). So none of them shows raw in
    events, results, callbacks, logs or errors, after a restart exactly as before it."""
    token_file = settings.data_dir / ADMIN_TOKEN_FILE
    with contextlib.suppress(FileNotFoundError):
        redactor.add(token_file.read_text().strip(), "admin-token")
    values = []
    for info in await credentials.list():
        secret = await credentials.get(info.name, project=info.project)
        values.append((secret.reveal(), info.name))
    redactor.add_many(values)


def build_callback_outbox(database: Database) -> CallbackOutbox:
    """The callback outbox on the process's database."""
    from forgeline.adapters.callbacks.outbox import SqlCallbackOutbox

    return SqlCallbackOutbox(database)


def build_callback_policy(settings: Settings) -> CallbackUrlPolicy:
    """The callback URL policy (``FORGELINE_CALLBACK_ALLOWED_HOSTS``)."""
    from forgeline.domain.errors import ConfigurationError
    from forgeline.services.callback_policy import CallbackUrlPolicy

    try:
        return CallbackUrlPolicy(settings.callback_allowed_hosts)
    except ValueError as exc:
        raise ConfigurationError(f"FORGELINE_CALLBACK_ALLOWED_HOSTS: {exc}") from exc


def build_callback_dispatcher(
    settings: Settings,
    database: Database,
    redactor: Redactor,
    observer: Observer | None = None,
    *,
    outbox: CallbackOutbox | None = None,
) -> CallbackDispatcher:
    """The callback dispatcher (not started), its signing key loaded or generated; it
    sends from ``outbox`` (default: a new one on ``database``)."""
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
        outbox or build_callback_outbox(database),
        build_callback_policy(settings),
        secret,
        config=config,
        redactor=redactor,
        observer=observer,
    )


def build_sessions(settings: Settings, auth: AuthService, redactor: Redactor) -> SessionService:
    """The dashboard's sessions, their key loaded or generated (and masked)."""
    from forgeline.services.keyfile import ensure_key_file
    from forgeline.services.sessions import SESSION_KEY_FILE, SessionService

    configured = settings.session_secret.get_secret_value() if settings.session_secret else None
    secret = ensure_key_file(
        settings.data_dir / SESSION_KEY_FILE, configured=configured, name="session-secret"
    )
    redactor.add(secret.reveal(), "session-secret")
    return SessionService(auth, secret, ttl_s=settings.session_ttl_s)


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


def build_git(settings: Settings, workspace: Workspace, redactor: Redactor) -> Git:
    """Real git through the workspace, with forgeline's own timeouts."""
    from forgeline.adapters.git import GitCli

    return GitCli(
        workspace,
        binary=settings.git_bin,
        timeout_s=settings.git_timeout_s,
        network_timeout_s=settings.git_network_timeout_s,
        redactor=redactor,
    )


def git_author(settings: Settings) -> GitAuthor:
    """The bot identity of build commits."""
    return GitAuthor(settings.git_author_name, settings.git_author_email)


@dataclass
class Container:
    """Everything an entrypoint needs, built from one :class:`Settings`.

    Build it with :func:`open_container`; tests may construct one with their own parts.
    """

    settings: Settings
    registry: ProviderRegistry
    database: Database
    redactor: Redactor
    #: Where forgeline's own commands (git) run and checkouts live.
    workspace: Workspace
    #: Where agents run: the sandbox, unless FORGELINE_SANDBOX=none or kubernetes.
    agent_workspace: Workspace
    store: Store
    queue: WorkQueue
    credentials: CredentialStore
    injector: CredentialInjector
    #: Setting, listing and deleting credentials (the API's routes and the dashboard's).
    credential_admin: CredentialService
    git: Git
    templates: TemplateProvider
    ci: CIProvider | None
    callback_policy: CallbackUrlPolicy
    callbacks: CallbackDispatcher
    auth: AuthService
    #: The dashboard's sign-ins and CSRF tokens.
    sessions: SessionService
    builds: BuildService
    projects: ProjectService
    metrics: Metrics
    #: The task event streams of this process.
    events: EventHub
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def ping_database(self) -> None:
        """Raise ``StorageError`` unless the database answers (readiness)."""
        await self.database.ping()

    @property
    def sandboxed(self) -> bool:
        """True when agents run in forgeline's bubblewrap sandbox."""
        from forgeline.adapters.workspace.sandbox import BubblewrapWorkspace

        return isinstance(self.agent_workspace, BubblewrapWorkspace)

    def worker(self, name: str, concurrency: int) -> Worker:
        """A build worker on this container's adapters."""
        from forgeline.services.worker import Worker, WorkerConfig

        s = self.settings
        return Worker(
            WorkerConfig(
                name=name,
                checkouts_dir=Path(s.checkouts_dir or s.data_dir / "checkouts"),
                author=git_author(s),
                concurrency=concurrency,
                lease_s=s.lease_seconds,
                shutdown_grace_s=s.shutdown_grace_s,
                git_token_credential=s.git_token_credential,
                ci_find_timeout_s=s.woodpecker_find_timeout_s,
                ci_pipeline_timeout_s=s.woodpecker_pipeline_timeout_s,
                sandboxed=self.sandboxed or s.workspace != "local",
            ),
            queue=self.queue,
            store=self.store,
            registry=self.registry,
            git=self.git,
            workspace=self.workspace,
            redactor=self.redactor,
            injector=self.injector,
            callbacks=self.callbacks,
            ci=self.ci,
            templates=self.templates,
            metrics=self.metrics,
        )

    async def aclose(self) -> None:
        """Release every adapter's resources, last built first; idempotent."""
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            try:
                await close()
            except Exception:  # noqa: BLE001 - one failing closer must not keep others open
                structlog.get_logger("forgeline").exception("container.close_failed")


async def _optional_credential(
    credentials: CredentialStore, name: str, redactor: Redactor
) -> Secret | None:
    """A global credential forgeline itself uses (masked from now on), or None."""
    try:
        secret = await credentials.get(name)
    except CredentialNotFoundError:
        return None
    redactor.add(secret.reveal(), name)
    return secret


@asynccontextmanager
async def open_migrated_database(
    settings: Settings, *, migrate_schema: bool | None = None, create: bool = True
) -> AsyncIterator[Database]:
    """The database of ``settings``, opened (its data directory made, unless ``create`` is
    false: then a missing one is a ``ConfigurationError``) and migrated when
    ``migrate_schema`` (default: ``FORGELINE_AUTO_MIGRATE``) says so; closed on exit."""
    if not create and not settings.data_dir.is_dir():
        from forgeline.domain.errors import ConfigurationError

        raise ConfigurationError(
            f"the data dir {settings.data_dir} does not exist: run this where `forgeline"
            " serve` runs, or point FORGELINE_DATA_DIR at its data dir"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Whatever the umask made of it, or an older version left: keys, tokens, the database
    # and every checkout are in there.
    settings.data_dir.chmod(0o700)
    database = open_database(settings.database_url)
    try:
        await database.open()
        if settings.auto_migrate if migrate_schema is None else migrate_schema:
            await migrate(database)
        yield database
    finally:
        await database.aclose()


@asynccontextmanager
async def open_container(
    settings: Settings,
    *,
    redactor: Redactor | None = None,
    registry: ProviderRegistry | None = None,
) -> AsyncIterator[Container]:
    """Build every adapter from ``settings`` (migrating the schema when allowed) and close
    them all on exit. ``redactor`` is the one the process's logging already filters
    through, so values registered by builds are masked in its logs too; ``registry``
    replaces the agent providers of the settings (benchmarks' scripted agents)."""
    async with open_migrated_database(settings) as database:
        closers: list[Callable[[], Awaitable[None]]] = []
        try:
            container = await _assemble(
                settings, redactor or Redactor(), database, closers, registry
            )
        except BaseException:
            for close in reversed(closers):
                with contextlib.suppress(Exception):
                    await close()
            raise
        try:
            yield container
        finally:
            await container.aclose()


async def _assemble(
    settings: Settings,
    redactor: Redactor,
    database: Database,
    closers: list[Callable[[], Awaitable[None]]],
    registry: ProviderRegistry | None = None,
) -> Container:
    """Every adapter and service on ``database`` (with ``registry``'s agents when given);
    each closer is added as it is built."""
    from forgeline.adapters.queue import build_queue
    from forgeline.adapters.store import build_store
    from forgeline.adapters.workspace import build_agent_workspace, build_workspace
    from forgeline.adapters.workspace.local import LocalWorkspace
    from forgeline.services.auth import AuthService
    from forgeline.services.builds import BuildService
    from forgeline.services.credentials import CredentialInjector, CredentialService
    from forgeline.services.events import EventHub, HubConfig
    from forgeline.services.metrics import Metrics
    from forgeline.services.projects import ProjectConfig, ProjectService

    credentials = build_credential_store(settings, database, redactor)
    await mask_platform_secrets(settings, credentials, redactor)
    injector = CredentialInjector(credentials, redactor)
    workspace = build_workspace(settings)
    agent_workspace = build_agent_workspace(settings)
    if registry is None:
        opencode_password = None
        if settings.opencode_url:
            opencode_password = await _optional_credential(
                credentials, settings.opencode_password_credential, redactor
            )
        registry = build_registry(settings, agent_workspace, opencode_password=opencode_password)
    closers.append(registry.aclose)
    store = build_store(database)
    queue = build_queue(database)
    closers.append(queue.aclose)
    events = EventHub(
        store,
        queue,
        HubConfig(
            keepalive_s=settings.sse_keepalive_s,
            poll_s=settings.events_poll_s,
            buffer=settings.sse_buffer_events,
        ),
    )
    closers.append(events.aclose)
    git = build_git(settings, workspace, redactor)
    templates = build_templates(settings)
    ci_token = None
    if settings.woodpecker_url:
        ci_token = await _optional_credential(
            credentials, settings.woodpecker_token_credential, redactor
        )
    ci = build_ci(settings, ci_token)
    if ci is not None:
        closers.append(ci.aclose)
    outbox = build_callback_outbox(database)
    metrics = Metrics(queue=queue, outbox=outbox)
    callback_policy = build_callback_policy(settings)
    callbacks = build_callback_dispatcher(
        settings, database, redactor, metrics.callback_attempt, outbox=outbox
    )
    author = git_author(settings)
    auth = AuthService(store)
    return Container(
        settings=settings,
        registry=registry,
        database=database,
        redactor=redactor,
        workspace=workspace,
        agent_workspace=agent_workspace,
        store=store,
        queue=queue,
        credentials=credentials,
        injector=injector,
        credential_admin=CredentialService(credentials, store, redactor),
        git=git,
        templates=templates,
        ci=ci,
        callback_policy=callback_policy,
        callbacks=callbacks,
        auth=auth,
        sessions=build_sessions(settings, auth, redactor),
        builds=BuildService(
            queue=queue,
            store=store,
            registry=registry,
            max_queued_per_project=settings.max_queued_per_project,
            check_callback_url=callback_policy.check,
            callbacks=callbacks,
            templates=templates,
            credentials=credentials,
            # Only a process that runs builds knows whether their agents can run.
            check_availability=settings.workers > 0,
        ),
        projects=ProjectService(
            ProjectConfig(
                git_base_url=settings.git_base_url,
                scratch_dir=settings.data_dir / "scratch",
                author=author,
                git_token_credential=settings.git_token_credential,
            ),
            store=store,
            # Projects are created from forgeline's own disk (templates render here),
            # whatever workspace the builds run in.
            git=git
            if settings.workspace == "local"
            else build_git(settings, LocalWorkspace(), redactor),
            templates=templates,
            ci=ci,
            credentials=credentials,
            queue=queue,
            registry=registry,
        ),
        metrics=metrics,
        events=events,
        _closers=closers,
    )
