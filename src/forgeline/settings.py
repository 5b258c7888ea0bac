"""Settings: environment variables with the ``FORGELINE_`` prefix, optionally a TOML file.

Read once, in the composition root (``forgeline.bootstrap``), never at import time. A
settings file named by ``FORGELINE_CONFIG_FILE`` (TOML, keys without the prefix, e.g.
``port = 9000``) may mirror the environment; the environment wins.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

MiB = 1024 * 1024


#: What an ACP provider may be called: a lowercase provider name of forgeline's own style.
ACP_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
#: Provider names the built-in adapters hold (or will): an ACP agent cannot take them.
RESERVED_PROVIDERS = frozenset({"claude-code", "opencode", "codex", "gemini", "qwen"})


class AcpAgentSpec(BaseModel):
    """One ACP agent of ``FORGELINE_ACP_AGENTS``: how to start it.

    ``command`` is the argv (program first, looked up on PATH); ``env`` names variables of
    forgeline's own environment to hand on besides the usual ones (e.g. the agent's own
    configuration variable). Written either as the argv alone or as this object.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: tuple[str, ...]
    env: tuple[str, ...] = ()

    @field_validator("command")
    @classmethod
    def _command(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or not all(part and "\0" not in part for part in value):
            raise ValueError("command must be a non-empty list of non-empty strings")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of forgeline; DESIGN.md lists the public ones and their defaults."""

    model_config = SettingsConfigDict(
        env_prefix="FORGELINE_",
        extra="ignore",
        validate_default=True,
    )

    # --- where things live ---------------------------------------------------------------
    data_dir: Path = Field(
        Path(".forgeline"), description="database, bare repos, key files, checkouts"
    )
    database_url: str = Field("", description="sqlite:///… (default) or postgresql://…")
    auto_migrate: bool = Field(True, description="apply schema migrations at start-up")

    # --- the API ---------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(1 * MiB, description="larger request bodies get 413")
    max_queued_per_project: int = Field(20, ge=1, description="more queued builds get 429")
    sse_keepalive_s: float = Field(
        15.0,
        gt=0,
        le=30,
        description="idle event streams get a keep-alive comment this often (below the"
        " CLI's 45 s read timeout), so proxies do not cut them",
    )
    sse_buffer_events: int = Field(
        256,
        ge=1,
        le=100_000,
        description="events an event stream may fall behind before it is dropped (its"
        " client resumes with Last-Event-ID)",
    )
    events_poll_s: float = Field(
        2.0,
        gt=0,
        le=60,
        description="how often a watched task's events are read while other processes'"
        " appends are not notified (SQLite; PostgreSQL while its listener is down)",
    )
    db_request_timeout_s: float = Field(
        2.0,
        gt=0,
        le=60,
        description="longest a request waits for the database, retries included; then 503",
    )

    # --- workers ---------------------------------------------------------------------------
    workers: int = Field(2, ge=0, description="in-process workers of `forgeline serve`")
    lease_seconds: float = Field(30.0, gt=0, description="a dead worker's build waits this long")
    shutdown_grace_s: float = Field(30.0, ge=0, description="SIGTERM: running builds may finish")

    # --- agents ----------------------------------------------------------------------------
    claude_bin: str = "claude"
    opencode_bin: str = "opencode"
    codex_bin: str = "codex"
    gemini_bin: str = "gemini"
    qwen_bin: str = "qwen"
    cli_max_retries: int = Field(
        2, ge=0, description="retries of a model request by the codex, gemini and qwen CLIs"
    )
    prices: Path | None = Field(
        None,
        description="JSON price table (USD per million input/output/cached tokens per model) "
        "for estimating the cost of CLIs that report tokens only; default: the one shipped "
        "in forgeline/adapters/agents/prices.json",
    )
    opencode_url: str | None = Field(
        None, description="connect to this server instead of starting one"
    )
    opencode_password_credential: str = Field(
        "opencode-password",
        description="credential holding the password of the server at FORGELINE_OPENCODE_URL",
    )
    opencode_config: Path | None = Field(
        None, description="JSON handed on as OPENCODE_CONFIG_CONTENT"
    )
    claude_permission_mode: Literal["bypassPermissions", "acceptEdits", "default", "plan"] = (
        "bypassPermissions"
    )
    claude_max_retries: int = Field(2, ge=0, description="CLAUDE_CODE_MAX_RETRIES for the CLI")
    agent_line_limit: int = Field(64 * MiB, ge=64 * 1024, description="largest stream-json line")
    agent_idle_timeout_s: float = Field(
        600.0, gt=0, description="no event for this long ends a run"
    )
    debug_raw_events: bool = Field(False, description="attach the provider's message as data.raw")
    acp_agents: dict[str, AcpAgentSpec] = Field(
        default_factory=dict,
        description='ACP agents as providers, a JSON object of name -> argv (or {"command":'
        ' argv, "env": [names]}), e.g. {"gemini-acp": ["gemini", "--acp"]}',
    )
    acp_permission_mode: Literal["bypassPermissions", "acceptEdits", "default"] = Field(
        "bypassPermissions",
        description="how an ACP agent's permission requests are answered: every tool"
        " allowed; reads and edits only; reads only",
    )
    claude_state_dir: str | None = Field(
        None,
        description="per-project HOME/CLAUDE_CONFIG_DIR root, a path in the workspace; "
        "default <data dir>/agents/claude",
    )

    # --- where commands run ----------------------------------------------------------------
    workspace: Literal["local", "kubernetes"] = "local"
    checkouts_dir: str | None = Field(
        None,
        description="where build checkouts live, a path in the workspace (in the pod for "
        "kubernetes); default <data dir>/checkouts",
    )
    sandbox: Literal["bwrap", "none"] = Field(
        "bwrap",
        description="bwrap: every agent run in a bubblewrap sandbox (the default); none: "
        "agents run unconfined, an explicit operator choice that every build's events warn of",
    )
    bwrap_bin: str = "bwrap"
    sandbox_uid: int = Field(
        65534, ge=1, description="the unprivileged uid agents run as when forgeline is root"
    )
    sandbox_gid: int = Field(65534, ge=1, description="... and its gid")
    sandbox_read_only: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="more host paths every sandbox may read (os.pathsep-separated)",
    )
    kubectl_bin: str = "kubectl"
    kube_context: str | None = None
    kube_namespace: str = "default"
    kube_pod: str | None = None
    kube_container: str | None = None

    # --- git -------------------------------------------------------------------------------
    git_base_url: str = Field("", description="default <data dir>/git: bare repositories on disk")
    git_author_name: str = "forgeline"
    git_author_email: str = "forgeline@localhost"
    git_token_credential: str = Field("git-token", description="credential used for https pushes")
    git_bin: str = "git"
    git_timeout_s: float = Field(120.0, gt=0, description="limit of a local git command")
    git_network_timeout_s: float = Field(600.0, gt=0, description="limit of a clone, fetch or push")

    # --- CI and templates ------------------------------------------------------------------
    woodpecker_url: str | None = None
    woodpecker_token_credential: str = "woodpecker-token"  # noqa: S105 - a name, not a value
    woodpecker_poll_interval_s: float = Field(3.0, gt=0, description="pipeline polling pace")
    woodpecker_find_timeout_s: float = Field(
        120.0, gt=0, description="how long a pushed commit's pipeline may take to appear"
    )
    woodpecker_pipeline_timeout_s: float = Field(
        3600.0, gt=0, description="how long a pipeline is followed before it is cancelled"
    )
    template_path: Annotated[list[Path], NoDecode] = Field(default_factory=list)

    # --- secrets ---------------------------------------------------------------------------
    master_key: SecretStr | None = None
    callback_secret: SecretStr | None = None
    callback_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    callback_retry_period_s: float = Field(24 * 3600.0, gt=0)
    callback_backoff_base_s: float = Field(2.0, ge=0, description="first retry delay ceiling")
    callback_backoff_cap_s: float = Field(600.0, gt=0, description="largest retry delay")
    callback_timeout_s: float = Field(10.0, gt=0, le=120, description="one delivery attempt")

    # --- the dashboard ---------------------------------------------------------------------
    session_secret: SecretStr | None = Field(
        None,
        description="key of the dashboard's session cookies and CSRF tokens (the same on every"
        " API process behind one address); generated into the data dir on first run if unset",
    )
    session_ttl_s: float = Field(
        12 * 3600.0, ge=60, le=30 * 24 * 3600.0, description="how long a dashboard sign-in lasts"
    )

    # --- logs ------------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = "console"

    @field_validator("callback_allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("acp_agents", mode="before")
    @classmethod
    def _acp_agents(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # pydantic says what is wrong with it
        specs = {}
        for name, spec in value.items():
            if not isinstance(name, str) or not ACP_NAME.fullmatch(name):
                raise ValueError(
                    f"ACP agent name {name!r} must be lowercase letters, digits, '.', '_' or"
                    " '-' (at most 63)"
                )
            if name in RESERVED_PROVIDERS:
                raise ValueError(f"ACP agent name {name!r} is a built-in provider's")
            specs[name] = {"command": spec} if isinstance(spec, list) else spec
        return specs

    @field_validator("template_path", "sandbox_read_only", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [Path(p) for p in value.split(os.pathsep) if p]
        return value

    @model_validator(mode="after")
    def _derived_defaults(self) -> Settings:
        # Defaults that depend on the data directory are filled here, once, so every later
        # reader sees the same absolute paths whatever the current directory becomes.
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'forgeline.db'}"
        if not self.git_base_url:
            self.git_base_url = str(self.data_dir / "git")
        return self

    @property
    def uses_postgres(self) -> bool:
        """True when the database is PostgreSQL (many workers, many machines)."""
        return self.database_url.startswith(("postgresql://", "postgres://"))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the optional TOML settings file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("FORGELINE_CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)
