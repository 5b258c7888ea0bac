"""Where the ``opencode serve`` process comes from: started by us, or configured.

:class:`ManagedServer` is an ``opencode serve`` that forgeline starts, lazily on first use,
through a :class:`~forgeline.ports.workspace.Workspace` (the bubblewrap sandbox for builds):

- ``--hostname 127.0.0.1 --port 0``; the real port is read from the stdout line
  ``opencode server listening on http://127.0.0.1:<port>`` (``--port 0`` means "4096 if
  free", so two servers starting at once may race for 4096: the loser exits with
  ``ServeError`` and we start again, a bounded number of times);
- a generated ``OPENCODE_SERVER_PASSWORD`` (HTTP Basic, user ``opencode``) so nothing else
  on the machine can drive the agent;
- its own ``HOME`` and ``XDG_*`` directories under its state directory (even ``--version``
  writes there, and the session database lives there, so a stable place per project lets a
  later build resume a session);
- ``OPENCODE_DISABLE_MODELS_FETCH=1`` and the provider configuration as
  ``OPENCODE_CONFIG_CONTENT`` (it applies to every directory, unlike a project file);
- an explicit environment: an allow-list of the worker's own variables plus its model
  providers' variables (``OPENAI_*``, ``ANTHROPIC_*`` …), nothing else;
- writable: its state directory and the directories it is given (a build's checkout);
- stopped as a whole by the workspace (SIGTERM, a bounded wait, SIGKILL of every process).

:class:`RemoteServer` is a configured URL with its password; nothing to start or stop.

:class:`SharedServer` and :class:`ServerPerRun` are the two ways an adapter gets a server for
a run: one server for every run, or a server of its own for each run, whose sandbox shows it
exactly that run's checkout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import posixpath
import re
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from forgeline.adapters.agents.opencode.client import OpenCodeClient, ServerAddress
from forgeline.domain.agent import DEFAULT_AVAILABILITY_TIMEOUT, AgentRequest
from forgeline.domain.errors import (
    AgentUnavailableError,
    ConfigurationError,
    ExternalServiceError,
    WorkspaceError,
)
from forgeline.domain.secrets import Secret
from forgeline.ports.workspace import Process, Workspace

PROVIDER = "opencode"

#: Launch → "listening" takes ~1.45 s on an idle 2-core machine; under load (tests of
#: several engineers, a cold page cache for a 185 MB binary) it has been seen far slower.
START_TIMEOUT_S = 60.0

#: SIGTERM → exit takes 0.09 s idle, ~2 s while a run is busy; then SIGKILL.
STOP_GRACE_S = 5.0

#: How often a start is retried when the server exits before listening (the port race).
START_ATTEMPTS = 3

#: Variables of the worker's environment the server may inherit: what a shell, git and
#: the tools the agent runs need. Everything else (tokens of the worker, cloud keys) stays
#: out unless passed explicitly as ``extra_env``.
ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "SSL_CERT_FILE", "SSL_CERT_DIR")

#: Model providers' variables of the worker's environment are handed on too, so that an
#: operator's keys and gateways (``OPENAI_BASE_URL``, or ``{env:OPENAI_API_KEY}`` in the
#: provider configuration) reach the server, as ``ANTHROPIC_*`` reaches Claude Code.
PROVIDER_ENV_PREFIXES = (
    "OPENAI_",
    "ANTHROPIC_",
    "OPENROUTER_",
    "AZURE_",
    "AWS_",
    "GOOGLE_",
    "GEMINI_",
    "MISTRAL_",
    "GROQ_",
    "DEEPSEEK_",
    "XAI_",
)

_LISTENING = re.compile(rb"listening on (http://[^\s]+)")
#: The longest stdout line of the server kept (it prints only short status lines).
_LINE_LIMIT = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerCheck:
    """Whether the server can be used right now (for ``capabilities``)."""

    available: bool
    version: str | None
    detail: str | None


class OpenCodeServer(Protocol):
    """A server the adapter talks to; duties: address on demand, bounded stop."""

    async def check(self) -> ServerCheck:
        """Health of a running server, else whether one can start; bounded, never raises."""
        ...

    async def client(self) -> OpenCodeClient:
        """A client of the running server, starting it first if needed."""
        ...

    def running_client(self) -> OpenCodeClient | None:
        """The client if the server is up right now (never starts anything)."""
        ...

    async def aclose(self) -> None:
        """Release the client and, for a managed server, end its process group."""
        ...


class RemoteServer:
    """A server started by someone else: ``FORGELINE_OPENCODE_URL`` with its password."""

    def __init__(self, url: str, password: Secret | None, *, username: str = "opencode") -> None:
        self._client = OpenCodeClient(ServerAddress(url.rstrip("/"), password, username))

    async def client(self) -> OpenCodeClient:
        """The client (the server is assumed up; calls fail with context if not)."""
        return self._client

    async def check(self) -> ServerCheck:
        """``GET /global/health`` within ``DEFAULT_AVAILABILITY_TIMEOUT``."""
        return await _health_check(self._client)

    def running_client(self) -> OpenCodeClient | None:
        """Always the client: whether it answers is for a health check to say."""
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


class ManagedServer:
    """``opencode serve`` started by forgeline on 127.0.0.1 through ``workspace``.

    ``state_dir`` holds its HOME (sessions, snapshots, config); it and ``writable`` are the
    directories it may write (in a sandboxing workspace, the only ones).
    """

    def __init__(
        self,
        *,
        binary: str,
        workspace: Workspace,
        state_dir: Path,
        writable: Sequence[str] = (),
        config_content: str | None = None,
        extra_env: dict[str, str] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self._binary = binary
        self._workspace = workspace
        self._state_dir = state_dir
        self._writable = (str(state_dir), *writable)
        self._config_content = config_content
        self._extra_env = dict(extra_env or {})
        self._start_timeout_s = start_timeout_s
        self._lock = asyncio.Lock()
        self._proc: Process | None = None
        self._client: OpenCodeClient | None = None
        self._drain: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The pid of the server's process (its sandbox) while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def check(self) -> ServerCheck:
        """A running server's health; before the first run, ``opencode --version``.

        The version probe runs with the server's own HOME and XDG directories: even
        ``--version`` writes there (P14), and it must not litter the worker's home.
        """
        if (client := self.running_client()) is not None:
            return await _health_check(client)
        return await self._probe_version()

    async def _probe_version(self) -> ServerCheck:
        try:
            await self._make_dirs()
            out = await self._workspace.run(
                [self._binary, "--version"],
                cwd=str(self._state_dir / "home"),
                env=self._environment(Secret("unused-for-version")),
                timeout_s=DEFAULT_AVAILABILITY_TIMEOUT,
                writable=self._writable,
            )
        except WorkspaceError as exc:
            return ServerCheck(False, None, f"{self._binary}: {exc.message}")
        text = out.stdout.decode(errors="replace").strip()
        if not out.ok:
            reason = (out.stderr_tail(3) or text)[:300]
            return ServerCheck(
                False, None, f"{self._binary} --version exited {out.exit_code}: {reason}"
            )
        return ServerCheck(True, text.split()[0] if text else None, self._binary)

    def running_client(self) -> OpenCodeClient | None:
        """The client when the process is up."""
        if self._proc is not None and self._proc.returncode is None:
            return self._client
        return None

    async def client(self) -> OpenCodeClient:
        """Start the server on first use (once, under a lock) and return its client."""
        if (ready := self.running_client()) is not None:
            return ready
        async with self._lock:
            if self._closed:
                raise AgentUnavailableError("the opencode server was shut down", provider=PROVIDER)
            if (ready := self.running_client()) is not None:
                return ready
            await self._stop_locked()  # a dead server leaves a client and a drain behind
            for attempt in range(1, START_ATTEMPTS + 1):
                try:
                    self._client = await self._start()
                    return self._client
                except AgentUnavailableError:
                    await self._stop_locked()
                    if attempt == START_ATTEMPTS:
                        raise
                except asyncio.CancelledError:
                    # The caller gave up mid-start: no half-started server stays behind.
                    await asyncio.shield(self._stop_locked())
                    raise
            raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """End the server and everything it started; idempotent."""
        async with self._lock:
            self._closed = True
            await self._stop_locked()

    # --- start -----------------------------------------------------------------------------

    def _environment(self, password: Secret) -> dict[str, str]:
        home = self._state_dir / "home"
        env = {name: os.environ[name] for name in ENV_ALLOW if name in os.environ}
        env.update(
            (name, value)
            for name, value in os.environ.items()
            if name.startswith(PROVIDER_ENV_PREFIXES)
        )
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(self._extra_env)
        # Last, so nothing inherited or extra can replace the sandbox or the password.
        env.update(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_DATA_HOME=str(home / ".local" / "share"),
            XDG_CACHE_HOME=str(home / ".cache"),
            XDG_STATE_HOME=str(home / ".local" / "state"),
            TMPDIR=str(self._state_dir / "tmp"),
            OPENCODE_SERVER_USERNAME="opencode",
            OPENCODE_SERVER_PASSWORD=password.reveal(),
            OPENCODE_DISABLE_MODELS_FETCH="1",
            OPENCODE_DISABLE_AUTOUPDATE="1",
        )
        if self._config_content is not None:
            env["OPENCODE_CONFIG_CONTENT"] = self._config_content
        return env

    async def _make_dirs(self) -> None:
        for sub in ("home", "tmp"):
            await self._workspace.ensure_dir(str(self._state_dir / sub))

    async def _start(self) -> OpenCodeClient:
        password = Secret(secrets.token_urlsafe(32), name="opencode-server-password")
        try:
            await self._make_dirs()
            self._proc = await self._workspace.spawn(
                [self._binary, "serve", "--hostname", "127.0.0.1", "--port", "0"],
                cwd=str(self._state_dir / "home"),
                env=self._environment(password),
                line_limit=_LINE_LIMIT,
                writable=self._writable,
            )
        except WorkspaceError as exc:
            raise AgentUnavailableError(
                f"cannot start {self._binary!r}: {exc.message}", provider=PROVIDER
            ) from exc
        url = await self._read_listening(self._proc)
        client = OpenCodeClient(ServerAddress(url, password))
        try:
            async with asyncio.timeout(DEFAULT_AVAILABILITY_TIMEOUT):
                await client.health()
        except (TimeoutError, ExternalServiceError) as exc:
            await client.aclose()
            raise AgentUnavailableError(
                f"opencode server at {url} is not healthy: {exc}", provider=PROVIDER
            ) from exc
        return client

    async def _read_listening(self, proc: Process) -> str:
        lines = proc.stdout_lines()
        try:
            async with asyncio.timeout(self._start_timeout_s):
                async for line in lines:
                    if match := _LISTENING.search(line):
                        # Past the listening line stdout only carries noise: keep reading
                        # it, so what the server prints never piles up.
                        self._drain = asyncio.create_task(
                            _drain(lines), name="opencode-serve-stdout"
                        )
                        return match.group(1).decode()
        except TimeoutError as exc:
            raise AgentUnavailableError(
                f"opencode serve did not listen within {self._start_timeout_s:g} s",
                provider=PROVIDER,
            ) from exc
        except WorkspaceError as exc:
            raise AgentUnavailableError(
                f"opencode serve printed no listening line: {exc.message}", provider=PROVIDER
            ) from exc
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_GRACE_S):
                await proc.wait()
        tail = " | ".join(proc.stderr_tail(5).splitlines())[:500]
        raise AgentUnavailableError(
            f"opencode serve exited with {proc.returncode} before listening: {tail}",
            provider=PROVIDER,
        )

    # --- stop ------------------------------------------------------------------------------

    async def _stop_locked(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        proc, self._proc = self._proc, None
        if proc is not None:
            await proc.kill(STOP_GRACE_S)
        drain, self._drain = self._drain, None
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


async def _drain(lines: AsyncIterator[bytes]) -> None:
    with contextlib.suppress(WorkspaceError):
        async for _ in lines:
            pass


class ServerSource(Protocol):
    """Where an adapter's runs get their server."""

    async def acquire(self, request: AgentRequest) -> OpenCodeServer:
        """The server ``request`` runs on (not started yet, maybe)."""
        ...

    async def release(self, server: OpenCodeServer) -> None:
        """``request``'s run is over (a server of its own is stopped)."""
        ...

    async def check(self) -> ServerCheck:
        """Whether runs can get a server now; bounded, never raises."""
        ...

    async def aclose(self) -> None:
        """Stop every server still running; idempotent."""
        ...


class SharedServer:
    """One server for every run (a configured remote one, or one a test starts)."""

    def __init__(self, server: OpenCodeServer) -> None:
        self.server = server

    async def acquire(self, request: AgentRequest) -> OpenCodeServer:
        """Always the one server."""
        return self.server

    async def release(self, server: OpenCodeServer) -> None:
        """Nothing: the server serves the next run."""

    async def check(self) -> ServerCheck:
        """The server's own check."""
        return await self.server.check()

    async def aclose(self) -> None:
        """Stop (or disconnect from) the server."""
        await self.server.aclose()


class ServerPerRun:
    """A sandboxed ``opencode serve`` for each run, seeing exactly that run's checkout.

    Its state (sessions, so a later build can resume one) lives under
    ``<state_root>/<the request's state name>``, one directory per project.
    """

    def __init__(
        self,
        *,
        binary: str,
        workspace: Workspace,
        state_root: Path,
        config_content: str | None = None,
    ) -> None:
        self._binary = binary
        self._workspace = workspace
        self._state_root = state_root
        self._config_content = config_content
        self._live: set[ManagedServer] = set()
        self._probe = ManagedServer(
            binary=binary,
            workspace=workspace,
            state_dir=state_root / "probe",
            config_content=config_content,
        )

    async def acquire(self, request: AgentRequest) -> OpenCodeServer:
        """A new server whose sandbox may write the run's workdir and its project state."""
        server = ManagedServer(
            binary=self._binary,
            workspace=self._workspace,
            state_dir=self._state_root / request.state_name(),
            writable=(posixpath.abspath(request.workdir),),
            config_content=self._config_content,
            # A server of its own: the build's credentials can reach the agent's tools.
            extra_env=dict(request.env),
        )
        self._live.add(server)
        return server

    async def release(self, server: OpenCodeServer) -> None:
        """Stop the run's server."""
        try:
            await server.aclose()
        finally:
            self._live.discard(server)

    async def check(self) -> ServerCheck:
        """``opencode --version`` in a sandbox (nothing is started for a probe)."""
        return await self._probe.check()

    async def aclose(self) -> None:
        """Stop the servers of runs that are still going (a shutdown)."""
        live, self._live = list(self._live), set()
        await asyncio.gather(*(server.aclose() for server in live), return_exceptions=True)


async def _health_check(client: OpenCodeClient) -> ServerCheck:
    try:
        async with asyncio.timeout(DEFAULT_AVAILABILITY_TIMEOUT):
            version = await client.health()
    except TimeoutError:
        return ServerCheck(False, None, f"no answer within {DEFAULT_AVAILABILITY_TIMEOUT:g} s")
    except ExternalServiceError as exc:
        return ServerCheck(False, None, exc.message)
    return ServerCheck(True, version or None, client.address.base_url)


def read_config_content(path: Path | None) -> str | None:
    """The text of ``FORGELINE_OPENCODE_CONFIG``, checked to be a JSON object."""
    if path is None:
        return None
    try:
        text = path.read_text()
        parsed = json.loads(text)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the opencode config {path}: {exc}") from exc
    except ValueError as exc:
        raise ConfigurationError(f"the opencode config {path} is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ConfigurationError(f"the opencode config {path} must be a JSON object")
    return text
