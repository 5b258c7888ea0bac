"""ClaudeCodeAgent: the real ``claude`` CLI in print mode, streaming ``stream-json``.

One run is one ``claude -p … --output-format stream-json --verbose`` process, started through
the :class:`~forgeline.ports.workspace.Workspace` (locally or in a pod) with stdin closed
and an explicit environment (:func:`build_child_env`). Its stdout lines go through
:class:`~forgeline.adapters.agents.claude_code.parser.StreamJsonParser`; the run ends with
exactly one ``result`` event, which this module decides:

- the CLI's own ``result`` line, if it printed one (success decided by ``is_error``);
- ``cancelled`` after :meth:`ClaudeCodeAgent.cancel` or when the consumer stops iterating;
- ``timed_out`` after the wall-clock (``timeout_s``) or idle (no output for
  ``idle_timeout_s``) limit; the CLI can stall for minutes without printing anything;
- ``failed`` when the process ended without a ``result`` line (with its exit code and the
  last lines of stderr), when a line exceeds the cap, when the process cannot start, or when
  the reported cost passes ``max_cost_usd``.

Stopping a run (cancel, timeout, consumer gone) is one shared, bounded sequence: SIGINT to
the CLI (it then stops its tool commands and prints a result), ``interrupt_grace_s`` to
exit, then the workspace's kill, which SIGTERMs and SIGKILLs every process of the run,
including the Bash tool's commands that live in sessions of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Mapping

import structlog

from forgeline.adapters._aio import finish_despite_cancel
from forgeline.adapters.agents.claude_code.parser import CliResult, StreamJsonParser
from forgeline.domain.agent import (
    DEFAULT_AVAILABILITY_TIMEOUT,
    AgentCapabilities,
    AgentEvent,
    AgentProvider,
    AgentRequest,
    AgentResult,
    ErrorData,
    RunStatus,
    Usage,
)
from forgeline.domain.errors import LineTooLongError, WorkspaceError
from forgeline.ports.workspace import Process, Workspace

log = structlog.get_logger(__name__)

PERMISSION_MODES = ("bypassPermissions", "acceptEdits", "default", "plan")
MODELS = ("opus", "sonnet", "haiku")

#: Variables of forgeline's own environment that the CLI may see. Everything else is left
#: out: an inherited ``IS_SANDBOX=yes`` makes the CLI refuse to start, and unrelated
#: secrets of the host have no business in an agent's shell.
ENV_ALLOW_LIST = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "SHELL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
)
#: Every variable of forgeline's environment with one of these prefixes is passed on, so
#: an operator's gateway (``ANTHROPIC_BASE_URL``) and CLI tuning reach the CLI.
ENV_PASS_PREFIXES = ("ANTHROPIC_", "CLAUDE_CODE_")

#: Lines read ahead of the consumer; beyond this the reader stops, and so does the CLI
#: (its stdout pipe fills), which is the back-pressure we want.
_READ_AHEAD = 64
#: ... and never more bytes than this (or one line over it, up to the line limit).
_READ_AHEAD_BYTES = 8 * 1024 * 1024
#: After the CLI closed stdout, how long it may take to exit before being stopped.
_EXIT_WAIT_S = 3.0
#: After the CLI exited, how long a grandchild that inherited stdout may keep it open
#: before the run is wrapped up anyway (the kill sweep then closes it).
_EXIT_DRAIN_S = 1.0
#: ``error`` event kinds for the CLI's failed ``result`` subtypes.
_ERROR_KINDS = {
    "error_max_turns": "max_turns",
    "error_max_budget_usd": "budget_exceeded",
    "error_during_execution": "execution_error",
    "success": "api_error",  # is_error with subtype success: the API call failed
}
#: Run ids remembered for cancel-before-start and cancel-after-end.
_REMEMBERED_RUNS = 4096


def build_child_env(
    environ: Mapping[str, str],
    request_env: Mapping[str, str],
    *,
    home: str,
    config_dir: str,
    permission_mode: str,
    max_retries: int,
    runs_as_root: bool = True,
) -> dict[str, str]:
    """The whole environment of the CLI: nothing is inherited implicitly.

    In order, later wins: the allow-list from forgeline's ``environ``; every
    ``ANTHROPIC_*``/``CLAUDE_CODE_*`` of ``environ``; the request's variables (the build's
    credentials); then the fixed ones: ``HOME`` and ``CLAUDE_CONFIG_DIR`` (stable per
    project, so sessions can be resumed), no non-essential traffic, no auto-updater,
    bounded retries, and ``IS_SANDBOX=1`` exactly when the permission mode is
    ``bypassPermissions`` and the CLI may run as root (it refuses that mode to root without
    it, and refuses any other value); in forgeline's sandbox it is an unprivileged user.
    """
    env = {key: environ[key] for key in ENV_ALLOW_LIST if key in environ}
    env.update({k: v for k, v in environ.items() if k.startswith(ENV_PASS_PREFIXES)})
    env.update(request_env)
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env.update(
        HOME=home,
        CLAUDE_CONFIG_DIR=config_dir,
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CODE_MAX_RETRIES=str(max_retries),
    )
    if permission_mode == "bypassPermissions" and runs_as_root:
        env["IS_SANDBOX"] = "1"
    else:
        env.pop("IS_SANDBOX", None)
    return env


#: What a session id may look like to be carried between checkouts (the CLI's are UUIDs).
_SESSION_ID = re.compile(r"[A-Za-z0-9-]{1,100}")
#: The CLI's longest escaped project directory name before it appends a hash.
_PROJECT_DIR_MAX = 200

#: Copies a session's transcript into the project directory of the run's cwd, unless it is
#: there already: ``$1`` config dir, ``$2`` session id, ``$3`` that directory's name.
_CARRY_SESSION = (
    'dest="$1/projects/$3"; [ -f "$dest/$2.jsonl" ] && exit 0; '
    'for f in "$1"/projects/*/"$2.jsonl"; do [ -f "$f" ] || continue; '
    'mkdir -p "$dest" && cp -p "$f" "$dest/"; exit $?; done; exit 0'
)


def project_dir_name(cwd: str) -> str:
    """The name the CLI gives ``<config>/projects/<name>``, where a session's transcript
    lives, for a run in ``cwd``: every UTF-16 unit that is not an ASCII letter or digit
    becomes ``-``; past 200 characters the name is cut and a base-36 hash of ``cwd`` (Java's
    string hash, as the CLI computes it) appended. Mirrors claude 2.1's ``projects/``
    layout; a mismatch only means a resume from another checkout is not found."""
    units = cwd.encode("utf-16-le")
    codes = [int.from_bytes(units[i : i + 2], "little") for i in range(0, len(units), 2)]
    name = "".join(chr(c) if chr(c).isascii() and chr(c).isalnum() else "-" for c in codes)
    if len(name) <= _PROJECT_DIR_MAX:
        return name
    value = 0
    for code in codes:
        value = (value * 31 + code) & 0xFFFFFFFF
    value = abs(value - (1 << 32) if value >= 1 << 31 else value)
    digits = ""
    while True:
        value, rest = divmod(value, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[rest] + digits
        if not value:
            break
    return f"{name[:_PROJECT_DIR_MAX]}-{digits}"


def _remember(store: OrderedDict[str, None], run_id: str) -> None:
    store[run_id] = None
    store.move_to_end(run_id)
    while len(store) > _REMEMBERED_RUNS:
        store.popitem(last=False)


class _Run:
    """The mutable state of one run, shared by its generator, its reader and cancel()."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.proc: Process | None = None
        #: Set once, by cancel or a timeout: how the run will end.
        self.stop_status: RunStatus | None = None
        self.stop_text = ""
        self.stop_task: asyncio.Task[int | None] | None = None
        self.lines: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.space = asyncio.Event()
        self.eof = False
        self.exited_at: float | None = None
        self.read_error: WorkspaceError | None = None
        #: Set when the run's processes are gone (cancel() waits for it before a spawn).
        self.reaped = asyncio.Event()

    def request_stop(self, status: RunStatus, text: str) -> None:
        """Decide how the run ends (first caller wins) and wake its generator."""
        if self.stop_status is None:
            self.stop_status = status
            self.stop_text = text
        self.wake.set()


class _Feed:
    """Feeds a run's read-ahead lines to its parser, holding back the CLI's result."""

    def __init__(self, run: _Run, parser: StreamJsonParser) -> None:
        self.run = run
        self.parser = parser
        self.started = asyncio.get_running_loop().time()
        #: The CLI's result line came before any stop request (then it decides the end).
        self.result_first = False
        self.saw_error = False

    def take(self) -> list[AgentEvent]:
        """The events of the next line (the caller checked there is one)."""
        run = self.run
        line = run.lines.popleft()
        run.space.set()
        had_result = self.parser.cli_result is not None
        out = []
        for event in self.parser.feed(line):
            if event.is_result:
                continue  # the one result event is decided at the end of the run
            self.saw_error = self.saw_error or isinstance(event.data, ErrorData)
            out.append(event)
        if not had_result and self.parser.cli_result is not None and run.stop_status is None:
            self.result_first = True
        return out


def _own_result(
    status: RunStatus,
    text: str,
    cli: CliResult | None,
    session_id: str | None,
    duration_ms: int,
) -> AgentResult:
    """A result of our own making, keeping what the CLI reported (cost, usage, turns)."""
    reported = cli.result if cli is not None else None
    return AgentResult(
        status=status,
        text=text,
        session_id=(reported.session_id if reported else None) or session_id,
        num_turns=reported.num_turns if reported else 0,
        duration_ms=duration_ms,
        cost_usd=reported.cost_usd if reported else 0.0,
        usage=reported.usage if reported else Usage(),
    )


class ClaudeCodeAgent:
    """Drives the ``claude`` CLI through a :class:`Workspace` (see the module docstring).

    ``state_dir`` is where per-project state lives, as a path in the workspace:
    ``<state_dir>/<key>/home`` is the CLI's ``HOME`` and ``<state_dir>/<key>/config`` its
    ``CLAUDE_CONFIG_DIR`` (see :meth:`AgentRequest.state_name`). ``environ`` is forgeline's own
    environment, from which :func:`build_child_env` takes the allow-listed variables.
    A run may write its workdir and its state directory, nothing else (in a sandboxing
    workspace). ``runs_as_root`` is False when the workspace runs the CLI unprivileged (the
    bubblewrap sandbox), so it needs no ``IS_SANDBOX``.

    Every attempt of a build works in a checkout of its own, so a session continued by a
    later build was recorded under another cwd, where the CLI would not find it: its
    transcript is carried into the new cwd's project directory first.
    """

    def __init__(
        self,
        *,
        workspace: Workspace,
        state_dir: str,
        binary: str = "claude",
        environ: Mapping[str, str] | None = None,
        permission_mode: str = "bypassPermissions",
        max_retries: int = 2,
        line_limit: int = 64 * 1024 * 1024,
        idle_timeout_s: float = 600.0,
        raw_events: bool = False,
        interrupt_grace_s: float = 1.5,
        kill_grace_s: float = 1.0,
        runs_as_root: bool = True,
    ) -> None:
        if permission_mode not in PERMISSION_MODES:
            raise ValueError(f"unknown permission mode {permission_mode!r}")
        self._workspace = workspace
        self._state_dir = state_dir
        self._binary = binary
        self._environ = dict(environ or {})
        self._permission_mode = permission_mode
        self._max_retries = max_retries
        self._line_limit = line_limit
        self._idle_timeout_s = idle_timeout_s
        self._raw_events = raw_events
        # interrupt_grace_s + kill_grace_s + the kill's own SIGKILL wait stay under the
        # port's 5 s bound for cancel().
        self._interrupt_grace_s = interrupt_grace_s
        self._kill_grace_s = kill_grace_s
        self._runs_as_root = runs_as_root
        self._runs: dict[str, _Run] = {}
        self._precancelled: OrderedDict[str, None] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()

    @property
    def name(self) -> str:
        """``claude-code``."""
        return AgentProvider.CLAUDE_CODE.value

    # --- the port ------------------------------------------------------------------------

    def execute(self, request: AgentRequest) -> AsyncGenerator[AgentEvent, None]:
        """Validate ``request`` (raising at once if it can never run), then stream its run."""
        request.validate()
        return self._events(request)

    async def cancel(self, run_id: str) -> None:
        """Stop the run and return once its processes are gone (bounded, ~4.5 s at most).

        Before the run started it is remembered, and the run then ends at once as
        ``cancelled``; after it ended this is a no-op. Never raises for those cases.
        """
        run = self._runs.get(run_id)
        if run is None:
            if run_id not in self._finished:
                _remember(self._precancelled, run_id)
            return
        run.request_stop(RunStatus.CANCELLED, "cancelled")
        await self._stop(run)

    async def capabilities(self) -> AgentCapabilities:
        """``claude --version`` through the workspace, bounded by the availability timeout."""
        env = build_child_env(
            self._environ,
            {},
            home=self._environ.get("HOME", "/"),
            config_dir=f"{self._state_dir}/probe",
            permission_mode="default",
            max_retries=0,
        )
        available, version, detail = False, None, None
        try:
            async with asyncio.timeout(DEFAULT_AVAILABILITY_TIMEOUT):
                out = await self._workspace.run(
                    [self._binary, "--version"],
                    cwd="/",
                    env=env,
                    timeout_s=DEFAULT_AVAILABILITY_TIMEOUT * 0.7,
                )
        except WorkspaceError as exc:
            detail = exc.message
        except TimeoutError:
            detail = f"{self._binary} --version did not answer in time"
        else:
            text = out.stdout.decode(errors="replace").strip()
            if out.ok and text:
                available, version, detail = True, text.split()[0], self._binary
            else:
                reason = (out.stderr_tail(3) or text)[:300]
                detail = f"{self._binary} --version exited {out.exit_code}: {reason}"
        return AgentCapabilities(
            provider=self.name,
            available=available,
            version=version,
            detail=detail,
            resume=True,
            streaming=True,
            permission_modes=PERMISSION_MODES,
            models=MODELS,
        )

    async def aclose(self) -> None:
        """Cancel every run still going (a shutdown); idempotent."""
        await asyncio.gather(*(self.cancel(run_id) for run_id in list(self._runs)))

    # --- one run ---------------------------------------------------------------------------

    def argv(self, request: AgentRequest) -> list[str]:
        """The CLI's command line for ``request``."""
        argv = [
            self._binary,
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            self._permission_mode,
        ]
        if request.model:
            argv += ["--model", request.model]
        if request.max_turns is not None:
            argv += ["--max-turns", str(request.max_turns)]
        if request.max_cost_usd is not None:
            argv += ["--max-budget-usd", f"{request.max_cost_usd:.6f}"]
        if request.resume_session:
            # The equals form: a session id can never be mistaken for the prompt.
            argv.append(f"--resume={request.resume_session}")
        # After "--", a prompt starting with "-" is still the prompt.
        argv += ["--", request.prompt]
        return argv

    def _result_event(self, result: AgentResult) -> AgentEvent:
        return AgentEvent(data=result, provider=self.name, session_id=result.session_id)

    def _error_event(self, kind: str, message: str, session_id: str | None) -> AgentEvent:
        return AgentEvent(
            data=ErrorData(kind=kind, message=message), provider=self.name, session_id=session_id
        )

    async def _events(self, request: AgentRequest) -> AsyncGenerator[AgentEvent, None]:
        run_id = request.run_id
        if run_id in self._precancelled:
            del self._precancelled[run_id]
            _remember(self._finished, run_id)
            yield self._result_event(
                AgentResult(status=RunStatus.CANCELLED, text="cancelled before it started")
            )
            return
        if run_id in self._runs:
            yield self._error_event("duplicate_run", f"run {run_id} is already running", None)
            yield self._result_event(
                AgentResult(status=RunStatus.FAILED, text=f"run id {run_id} is already running")
            )
            return
        run = _Run(run_id)
        self._runs[run_id] = run
        tasks: list[asyncio.Task[None]] = []
        try:
            # aclosing: when our consumer stops, the nested generators are closed now, in
            # order, not whenever the garbage collector gets to them.
            async with contextlib.aclosing(self._drive(run, request, tasks)) as events:
                async for event in events:
                    yield event
        finally:
            # Reached on normal end, on aclose() by the consumer and on cancellation of
            # the consuming task alike: no process of the run may outlive this block.
            try:
                if run.proc is not None:
                    run.request_stop(RunStatus.CANCELLED, "cancelled")
                    await self._stop(run)
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                run.reaped.set()
                self._runs.pop(run_id, None)
                _remember(self._finished, run_id)

    async def _drive(
        self, run: _Run, request: AgentRequest, tasks: list[asyncio.Task[None]]
    ) -> AsyncGenerator[AgentEvent, None]:
        loop = asyncio.get_running_loop()
        feed = _Feed(run, StreamJsonParser(provider=self.name, raw=self._raw_events))
        try:
            proc = await self._spawn(run, request)
        except WorkspaceError as exc:
            run.reaped.set()
            yield self._error_event("spawn_failed", exc.message, None)
            yield self._result_event(
                AgentResult(
                    status=RunStatus.FAILED,
                    text=f"claude could not start: {exc.message}",
                    duration_ms=int((loop.time() - feed.started) * 1000),
                )
            )
            return
        if proc is None:  # cancelled while preparing: nothing was started
            run.reaped.set()
            yield self._result_event(
                AgentResult(status=run.stop_status or RunStatus.CANCELLED, text=run.stop_text)
            )
            return
        log.debug(
            "agent.run.started",
            provider=self.name,
            run_id=run.run_id,
            pid=proc.pid,
            workspace=self._workspace.name,
        )
        tasks.append(loop.create_task(self._read(run, proc), name=f"claude-read-{run.run_id}"))
        tasks.append(loop.create_task(self._watch(run, proc), name=f"claude-exit-{run.run_id}"))
        async with contextlib.aclosing(self._follow(run, request, feed)) as events:
            async for event in events:
                yield event
        if run.stop_status is None and run.read_error is None:
            # The CLI closed stdout: let it exit on its own before sweeping its processes.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_EXIT_WAIT_S):
                    await proc.wait()
        await self._stop(run)
        run.reaped.set()
        # Lines printed while stopping (an interrupted CLI reports what it dropped).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while not run.eof or run.lines:
                    while run.lines:
                        for event in feed.take():
                            yield event
                    if not run.eof:
                        run.wake.clear()
                        await run.wake.wait()
        async with contextlib.aclosing(self._conclude(run, request, feed, proc)) as events:
            async for event in events:
                yield event

    async def _spawn(self, run: _Run, request: AgentRequest) -> Process | None:
        """Prepare the state directories and start the CLI (unless already stopped)."""
        root = f"{self._state_dir.rstrip('/')}/{request.state_name()}"
        home, config_dir = f"{root}/home", f"{root}/config"
        env = build_child_env(
            self._environ,
            request.env,
            home=home,
            config_dir=config_dir,
            permission_mode=self._permission_mode,
            max_retries=self._max_retries,
            runs_as_root=self._runs_as_root,
        )
        await self._workspace.ensure_dir(home)
        await self._workspace.ensure_dir(config_dir)
        if request.resume_session and _SESSION_ID.fullmatch(request.resume_session):
            await self._carry_session(root, config_dir, request)
        if run.stop_status is None:
            run.proc = await self._workspace.spawn(
                self.argv(request),
                cwd=request.workdir,
                env=env,
                line_limit=self._line_limit,
                writable=(request.workdir, root),
            )
        return run.proc

    async def _carry_session(self, root: str, config_dir: str, request: AgentRequest) -> None:
        """Make the resumed session's transcript visible from this run's cwd (see the class);
        a failure is left for the CLI to report ("no conversation found")."""
        assert request.resume_session is not None  # noqa: S101 - checked by the caller
        argv = [
            "sh",
            "-c",
            _CARRY_SESSION,
            "forgeline-carry-session",
            config_dir,
            request.resume_session,
            project_dir_name(request.workdir),
        ]
        env = {"PATH": self._environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")}
        result = await self._workspace.run(argv, cwd="/", env=env, timeout_s=30.0, writable=(root,))
        if not result.ok:
            log.warning("agent.session_not_carried", error=result.stderr_tail(3))

    async def _follow(
        self, run: _Run, request: AgentRequest, feed: _Feed
    ) -> AsyncGenerator[AgentEvent, None]:
        """Yield the run's events until it ends, stalls, times out or is stopped."""
        loop = asyncio.get_running_loop()
        idle_s = request.idle_timeout_s or self._idle_timeout_s
        wall_deadline = feed.started + request.timeout_s
        last_output = loop.time()
        while run.stop_status is None:
            while run.lines:
                last_output = loop.time()
                for event in feed.take():
                    yield event
            if run.stop_status is not None or run.eof or run.read_error is not None:
                return
            now = loop.time()
            if now >= wall_deadline:
                run.request_stop(RunStatus.TIMED_OUT, f"timed out after {request.timeout_s:g} s")
                return
            if now >= last_output + idle_s:
                run.request_stop(RunStatus.TIMED_OUT, f"no output for {idle_s:g} s")
                return
            wake_at = min(wall_deadline, last_output + idle_s)
            if run.exited_at is not None:
                if now >= run.exited_at + _EXIT_DRAIN_S:
                    return
                wake_at = min(wake_at, run.exited_at + _EXIT_DRAIN_S)
            run.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wake_at - now):
                    await run.wake.wait()

    async def _conclude(
        self, run: _Run, request: AgentRequest, feed: _Feed, proc: Process
    ) -> AsyncGenerator[AgentEvent, None]:
        """Decide the one result event (and the error events that explain it)."""
        duration_ms = int((asyncio.get_running_loop().time() - feed.started) * 1000)
        parser = feed.parser
        session_id = parser.session_id
        cli = parser.cli_result
        if parser.unknown or parser.bad_lines:
            log.debug(
                "agent.run.tolerated",
                run_id=run.run_id,
                unknown=dict(parser.unknown),
                bad_lines=parser.bad_lines,
            )
        final: AgentResult
        if run.read_error is not None and not feed.result_first:
            message = f"claude output broke the protocol: {run.read_error.message}"
            if isinstance(run.read_error, LineTooLongError):
                message = (
                    f"claude printed a line longer than the {run.read_error.limit}-byte "
                    "limit (agent_line_limit); the run was stopped"
                )
            yield self._error_event("protocol", message, session_id)
            final = _own_result(RunStatus.FAILED, message, cli, session_id, duration_ms)
        elif run.stop_status is not None and not feed.result_first:
            final = _own_result(run.stop_status, run.stop_text, cli, session_id, duration_ms)
        elif cli is not None:
            final = cli.result
            if cli.is_error and not feed.saw_error:
                kind = _ERROR_KINDS.get(cli.subtype, "agent_error")
                yield self._error_event(kind, final.text or kind, session_id)
            if cli.permission_denials:
                yield self._error_event(
                    "permission_denied",
                    "tool use refused: " + ", ".join(cli.permission_denials),
                    session_id,
                )
            budget = request.max_cost_usd
            if budget is not None and final.cost_usd > budget and final.succeeded:
                message = f"cost {final.cost_usd:g} USD passed the budget of {budget:g} USD"
                yield self._error_event("budget_exceeded", message, session_id)
                final = _own_result(RunStatus.FAILED, message, cli, session_id, final.duration_ms)
        else:
            tail = proc.stderr_tail(10)
            message = f"claude exited with code {proc.returncode} without a result"
            if tail:
                message += f"; stderr: {tail}"
            yield self._error_event("process_exited", message, session_id)
            final = _own_result(RunStatus.FAILED, message, None, session_id, duration_ms)
        log.debug(
            "agent.run.finished",
            run_id=run.run_id,
            status=final.status.value,
            exit_code=proc.returncode,
            duration_ms=duration_ms,
            lines=parser.lines,
        )
        yield self._result_event(final)

    async def _read(self, run: _Run, proc: Process) -> None:
        """Move stdout lines into the run's read-ahead, bounded in lines and bytes."""
        max_bytes = max(self._line_limit, _READ_AHEAD_BYTES)
        try:
            async for line in proc.stdout_lines():
                run.lines.append(line)
                run.wake.set()
                while len(run.lines) >= _READ_AHEAD or (
                    len(run.lines) > 1 and sum(map(len, run.lines)) > max_bytes
                ):
                    run.space.clear()
                    await run.space.wait()
        except WorkspaceError as exc:  # LineTooLongError, a lost connection to a pod
            run.read_error = exc
        finally:
            run.eof = True
            run.wake.set()

    async def _watch(self, run: _Run, proc: Process) -> None:
        """Note when the CLI exits (a grandchild may hold stdout open past that)."""
        await proc.wait()
        run.exited_at = asyncio.get_running_loop().time()
        run.wake.set()

    async def _stop(self, run: _Run) -> None:
        """The shared, bounded stop sequence; every caller waits for the same one."""
        if run.proc is None:
            # Not started yet: the generator sees the stop request before spawning, or
            # right after, and stops the process itself.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.shield(run.reaped.wait())
            return
        if run.stop_task is None:
            run.stop_task = asyncio.get_running_loop().create_task(
                self._terminate(run.proc), name=f"claude-stop-{run.run_id}"
            )
        await finish_despite_cancel(run.stop_task)

    async def _terminate(self, proc: Process) -> int | None:
        if proc.returncode is None:
            # The grace covers delivering SIGINT too (a kubectl exec for a pod).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interrupt_grace_s):
                    await proc.interrupt()
                    await proc.wait()
        # Always: the CLI may be gone while its tool commands, in their own sessions, live.
        return await proc.kill(self._kill_grace_s)
