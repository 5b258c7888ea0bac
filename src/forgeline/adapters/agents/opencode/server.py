"""Where the ``opencode serve`` process comes from: started by us, or configured.

:class:`ManagedServer` starts ``opencode serve`` lazily on first use and shares it among all
runs of one adapter (one server serves many directories through ``?directory=``):

- ``--hostname 127.0.0.1 --port 0``; the real port is read from the stdout line
  ``opencode server listening on http://127.0.0.1:<port>`` (``--port 0`` means "4096 if
  free", so two servers starting at once may race for 4096: the loser exits with
  ``ServeError`` and we start again, a bounded number of times);
- a generated ``OPENCODE_SERVER_PASSWORD`` (HTTP Basic, user ``opencode``) so nothing else
  on the machine can drive the agent;
- its own ``HOME`` and ``XDG_*`` directories under the data directory (even ``--version``
  writes there, and the session database lives there, so a stable place lets a later
  process resume a session);
- ``OPENCODE_DISABLE_MODELS_FETCH=1`` and the provider configuration as
  ``OPENCODE_CONFIG_CONTENT`` (it applies to every directory, unlike a project file);
- an explicit environment: an allow-list of the worker's own variables plus its model
  providers' variables (``OPENAI_*``, ``ANTHROPIC_*`` …), nothing else;
- its own process group, ended as a whole (with any straggling descendants) on
  :meth:`aclose`: SIGTERM, a bounded wait, then SIGKILL.

:class:`RemoteServer` is a configured URL with its password; nothing to start or stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from forgeline.adapters.agents.opencode.client import OpenCodeClient, ServerAddress
from forgeline.domain.agent import DEFAULT_AVAILABILITY_TIMEOUT
from forgeline.domain.errors import (
    AgentUnavailableError,
    ConfigurationError,
    ExternalServiceError,
)
from forgeline.domain.secrets import Secret

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
_STDERR_TAIL = 50


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
    """``opencode serve`` started by forgeline on 127.0.0.1, shared by an adapter's runs."""

    def __init__(
        self,
        *,
        binary: str,
        state_dir: Path,
        config_content: str | None = None,
        extra_env: dict[str, str] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self._binary = binary
        self._state_dir = state_dir
        self._config_content = config_content
        self._extra_env = dict(extra_env or {})
        self._start_timeout_s = start_timeout_s
        self._lock = asyncio.Lock()
        self._proc: asyncio.subprocess.Process | None = None
        self._client: OpenCodeClient | None = None
        self._drains: list[asyncio.Task[None]] = []
        self._stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL)
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs (for resource measurements)."""
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
        env = self._environment(Secret("unused-for-version"))
        (self._state_dir / "home").mkdir(parents=True, exist_ok=True, mode=0o700)
        (self._state_dir / "tmp").mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            proc = await asyncio.create_subprocess_exec(
                self._binary,
                "--version",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            return ServerCheck(False, None, f"{self._binary}: {exc.strerror or exc}")
        try:
            async with asyncio.timeout(DEFAULT_AVAILABILITY_TIMEOUT):
                out, err = await proc.communicate()
        except TimeoutError:
            return ServerCheck(
                False,
                None,
                f"{self._binary} --version gave no answer within"
                f" {DEFAULT_AVAILABILITY_TIMEOUT:g} s",
            )
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        text = out.decode(errors="replace").strip()
        if proc.returncode != 0:
            reason = (err.decode(errors="replace").strip() or text)[:300]
            return ServerCheck(
                False, None, f"{self._binary} --version exited {proc.returncode}: {reason}"
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
            await self._stop_locked()  # a dead server leaves a client and drains behind
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
        """End the process group (SIGTERM, wait, SIGKILL); idempotent."""
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

    async def _start(self) -> OpenCodeClient:
        password = Secret(secrets.token_urlsafe(32), name="opencode-server-password")
        for sub in ("home", "tmp"):
            (self._state_dir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self._binary,
                "serve",
                "--hostname",
                "127.0.0.1",
                "--port",
                "0",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._environment(password),
                cwd=self._state_dir / "home",
                # Its own process group: aclose ends the server and what it spawned at once.
                start_new_session=True,
            )
        except OSError as exc:
            raise AgentUnavailableError(
                f"cannot start {self._binary!r}: {exc.strerror or exc}", provider=PROVIDER
            ) from exc
        proc = self._proc
        if proc.stdout is None or proc.stderr is None:  # pragma: no cover - PIPE was asked
            raise AgentUnavailableError("opencode serve has no output pipes", provider=PROVIDER)
        self._drains.append(
            asyncio.create_task(self._drain_stderr(proc.stderr), name="opencode-serve-stderr")
        )
        url = await self._read_listening(proc, proc.stdout)
        # Past the listening line stdout only carries noise; keep reading so it never fills.
        self._drains.append(
            asyncio.create_task(self._drain(proc.stdout), name="opencode-serve-stdout")
        )
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

    async def _read_listening(
        self, proc: asyncio.subprocess.Process, stdout: asyncio.StreamReader
    ) -> str:
        try:
            async with asyncio.timeout(self._start_timeout_s):
                while line := await stdout.readline():
                    if match := _LISTENING.search(line):
                        return match.group(1).decode()
        except TimeoutError as exc:
            raise AgentUnavailableError(
                f"opencode serve did not listen within {self._start_timeout_s:g} s",
                provider=PROVIDER,
            ) from exc
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_GRACE_S):
                await proc.wait()
        await asyncio.sleep(0)  # let the stderr drain take the last lines
        tail = " | ".join(list(self._stderr_tail)[-5:])[:500]
        raise AgentUnavailableError(
            f"opencode serve exited with {proc.returncode} before listening: {tail}",
            provider=PROVIDER,
        )

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self._stderr_tail.append(line.decode(errors="replace").rstrip())

    @staticmethod
    async def _drain(stream: asyncio.StreamReader) -> None:
        while await stream.read(65536):
            pass

    # --- stop ------------------------------------------------------------------------------

    async def _stop_locked(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        proc, self._proc = self._proc, None
        if proc is not None:
            await _end_process_group(proc)
        drains, self._drains = self._drains, []
        for task in drains:
            task.cancel()
        for task in drains:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _health_check(client: OpenCodeClient) -> ServerCheck:
    try:
        async with asyncio.timeout(DEFAULT_AVAILABILITY_TIMEOUT):
            version = await client.health()
    except TimeoutError:
        return ServerCheck(False, None, f"no answer within {DEFAULT_AVAILABILITY_TIMEOUT:g} s")
    except ExternalServiceError as exc:
        return ServerCheck(False, None, exc.message)
    return ServerCheck(True, version or None, client.address.base_url)


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from ``/proc``; empty where there is none)."""
    children: dict[int, list[int]] = {}
    try:
        entries = [p.name for p in Path("/proc").iterdir()]
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


async def _end_process_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the group, wait, SIGKILL the group and any descendant that left it."""
    if proc.returncode is not None:
        # The server died on its own (crash, OOM kill): what it started may live on in its
        # group (a group id is not reused while the group has members), so end them.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return
    # Tools may put their children in process groups of their own; note them now, while
    # the tree is still connected, so none survives the server.
    strays = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        async with asyncio.timeout(STOP_GRACE_S):
            await proc.wait()
    except TimeoutError:
        pass
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    if proc.returncode is None:
        # Bounded: SIGKILL cannot be ignored, so the wait ends at once.
        async with asyncio.timeout(STOP_GRACE_S):
            await proc.wait()


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
