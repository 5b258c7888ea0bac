"""The machinery every "prompt in, JSON lines out" agent CLI shares.

Claude Code, Codex, Gemini CLI and Qwen Code all run headless the same way: one process per
run, started through the :class:`~forgeline.ports.workspace.Workspace` (locally, in the
bubblewrap sandbox or in a pod) with stdin closed and an explicit environment, printing one
JSON object per stdout line. :class:`JsonLinesAgent` owns everything about such a run that
does not depend on the CLI; a subclass supplies only its :class:`Launch` (argv, environment,
files in the agent home) and a :class:`LineParser` for its lines.

A run ends with exactly one ``result`` event, decided here:

- the CLI's own verdict (:attr:`LineParser.verdict`), if it printed one;
- ``cancelled`` after :meth:`JsonLinesAgent.cancel` or when the consumer stops iterating;
- ``timed_out`` after the wall-clock (``timeout_s``) or idle (no output for
  ``idle_timeout_s``) limit; a CLI can stall for minutes without printing anything;
- ``failed`` when the process ended without a verdict (with its exit code and the last
  lines of stderr), when a line exceeds the cap, when the process cannot start, or when the
  cost passes ``max_cost_usd``.

Stopping a run (cancel, timeout, consumer gone) is one shared, bounded sequence: SIGINT to
the CLI (it may then stop its tool commands and report), ``interrupt_grace_s`` to exit, then
the workspace's kill, which SIGTERMs and SIGKILLs every process of the run, including tool
commands that live in sessions of their own.

Costs: a CLI that reports no dollars gets an estimate from the :class:`PriceTable` (the
result then says ``cost_source: estimated``); CLIs whose usage is cumulative over a resumed
session keep the session's previous total in the agent home (:class:`SessionTotals`), so a
run's usage is its own.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import re
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Protocol

import structlog

from forgeline.adapters._aio import finish_despite_cancel
from forgeline.adapters.agents.environment import child_env
from forgeline.domain.agent import (
    DEFAULT_AVAILABILITY_TIMEOUT,
    AgentCapabilities,
    AgentEvent,
    AgentRequest,
    AgentResult,
    CostSource,
    ErrorData,
    EventData,
    RunStatus,
    Usage,
    cut_output,
)
from forgeline.domain.clock import utcnow
from forgeline.domain.errors import LineTooLongError, WorkspaceError
from forgeline.domain.pricing import PriceTable
from forgeline.ports.workspace import Process, Workspace

log = structlog.get_logger(__name__)

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
#: Run ids remembered for cancel-before-start and cancel-after-end.
_REMEMBERED_RUNS = 4096
#: What a session id may look like to name a file or be carried between checkouts.
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


@dataclass(frozen=True, slots=True)
class Verdict:
    """A CLI's own verdict on a run: the result it reported, and how to explain a failure.

    ``error_kind`` names the ``error`` event added when the run failed and the CLI printed
    no error of its own; ``notes`` are error events to add whatever the status
    (e.g. tool uses the CLI refused). ``model`` is the model that answered, for pricing.
    """

    result: AgentResult
    is_error: bool
    error_kind: str = "agent_error"
    notes: tuple[ErrorData, ...] = ()
    model: str | None = None


class LineParser(Protocol):
    """Turns one CLI's stdout lines into normalized events (one parser per run).

    Never raises on input: a line that is not a JSON object is counted in ``bad_lines``, a
    kind it does not know in ``unknown``. The CLI's ``result`` is not an event of the
    parser's: it sets :attr:`verdict` instead, and the agent decides the one result event.
    """

    session_id: str | None
    verdict: Verdict | None
    lines: int
    bad_lines: int
    unknown: Counter[str]

    def feed(self, line: bytes) -> list[AgentEvent]:
        """The events of one line (often one, sometimes none or several)."""
        ...


def decode_line(parser: LineParser, line: bytes | str) -> dict[str, Any] | None:
    """One line as a JSON object, or None (counted in ``bad_lines`` unless blank)."""
    parser.lines += 1
    try:
        obj = _decode(line.decode() if isinstance(line, bytes) else line)
    # JSONDecodeError and UnicodeDecodeError alike; RecursionError for a line nested deeper
    # than the decoder goes (it is garbage as well, not a reason to crash).
    except (ValueError, RecursionError):
        if line.strip():
            parser.bad_lines += 1
        return None
    if not isinstance(obj, dict):
        parser.bad_lines += 1
        return None
    return obj


def as_int(value: Any) -> int:
    """``value`` if it is an int (not a bool), else 0: counts in untrusted lines."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def bounded(value: Any) -> Any:
    """``value`` with every string cut to the tool output limit (a 5 MB Write, a huge
    patch): the only way an event's input can grow unbounded."""
    if isinstance(value, str):
        return cut_output(value)
    if isinstance(value, Mapping):
        return {str(k): bounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [bounded(v) for v in value]
    return value


def make_events(
    parser: LineParser, provider: str, datas: list[EventData], obj: Mapping[str, Any], raw: bool
) -> list[AgentEvent]:
    """One line's event payloads as events of the parser's session, at one time; the
    line's object as ``data.raw`` when ``raw`` (the debug setting)."""
    if not datas:
        return []
    now = utcnow()
    attached = dict(obj) if raw else None
    return [
        AgentEvent(
            data=data, provider=provider, session_id=parser.session_id, time=now, raw=attached
        )
        for data in datas
    ]


# json.loads() on bytes first sniffs the encoding and goes through two wrappers; the CLIs
# write UTF-8, so decoding once and calling the decoder directly saves a third of the
# per-line overhead on the many small lines.
_decode = json.JSONDecoder().decode


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start one run: the command line, its whole environment, and the directories
    it may write besides its workdir (the project's agent home)."""

    argv: list[str]
    env: dict[str, str]
    writable: tuple[str, ...] = ()
    #: Reported usage is cumulative over the session: subtract the previous total.
    cumulative_usage: bool = False


class SessionTotals:
    """The usage total of each session, kept as ``<root>/forgeline-usage/<session>.json``
    in the agent home (through the workspace, so a pod's agent home works alike), for CLIs
    whose reported usage is cumulative over a resumed session."""

    DIR = "forgeline-usage"

    def __init__(self, workspace: Workspace, environ: Mapping[str, str]) -> None:
        self._workspace = workspace
        self._path = environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")

    def _file(self, root: str, session_id: str) -> str | None:
        if not SESSION_ID.fullmatch(session_id):
            return None
        return f"{root}/{self.DIR}/{session_id}.json"

    async def load(self, root: str, session_id: str) -> Usage:
        """The total recorded for ``session_id`` (zero when there is none)."""
        path = self._file(root, session_id)
        if path is None:
            return Usage()
        out = await self._workspace.run(
            ["sh", "-c", 'cat "$1" 2>/dev/null || true', "forgeline-usage", path],
            cwd="/",
            env={"PATH": self._path},
            timeout_s=30.0,
            writable=(root,),
        )
        try:
            raw = json.loads(out.stdout or b"{}")
            return Usage(**{k: int(raw.get(k, 0)) for k in Usage().to_dict()})
        except (ValueError, TypeError, AttributeError):
            return Usage()

    async def store(self, root: str, session_id: str, total: Usage) -> None:
        """Record ``total`` as the session's usage so far."""
        path = self._file(root, session_id)
        if path is not None:
            await write_file(self._workspace, path, json.dumps(total.to_dict()), root, self._path)


async def write_file(
    workspace: Workspace, path: str, content: str, root: str, search_path: str
) -> None:
    """Write ``content`` to ``path`` (under ``root``, created as needed) through the
    workspace; a failure is logged and left for the CLI to trip over."""
    await workspace.ensure_dir(root)  # a sandbox binds only what exists
    script = 'mkdir -p "$(dirname "$1")" && printf %s "$2" > "$1"'
    result = await workspace.run(
        ["sh", "-c", script, "forgeline-write", path, content],
        cwd="/",
        env={"PATH": search_path},
        timeout_s=30.0,
        writable=(root,),
    )
    if not result.ok:
        log.warning("agent.file_not_written", path=path, error=result.stderr_tail(3))


def subtract(total: Usage, before: Usage) -> Usage:
    """This run's share of a cumulative ``total`` (never negative: a total that went down
    means the CLI started counting afresh)."""
    if any(t < b for t, b in zip(total.to_dict().values(), before.to_dict().values(), strict=True)):
        return total
    return Usage(
        input_tokens=total.input_tokens - before.input_tokens,
        output_tokens=total.output_tokens - before.output_tokens,
        cache_read_tokens=total.cache_read_tokens - before.cache_read_tokens,
        cache_write_tokens=total.cache_write_tokens - before.cache_write_tokens,
    )


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
    """Feeds a run's read-ahead lines to its parser, holding back the CLI's verdict."""

    def __init__(self, run: _Run, parser: LineParser) -> None:
        self.run = run
        self.parser = parser
        self.started = asyncio.get_running_loop().time()
        #: The CLI's verdict came before any stop request (then it decides the end).
        self.result_first = False
        self.saw_error = False

    def take(self) -> list[AgentEvent]:
        """The events of the next line (the caller checked there is one)."""
        run = self.run
        line = run.lines.popleft()
        run.space.set()
        had_verdict = self.parser.verdict is not None
        out = []
        for event in self.parser.feed(line):
            if event.is_result:
                continue  # the one result event is decided at the end of the run
            self.saw_error = self.saw_error or isinstance(event.data, ErrorData)
            out.append(event)
        if not had_verdict and self.parser.verdict is not None and run.stop_status is None:
            self.result_first = True
        return out


def _own_result(
    status: RunStatus,
    text: str,
    verdict: Verdict | None,
    session_id: str | None,
    duration_ms: int,
) -> AgentResult:
    """A result of our own making, keeping what the CLI reported (cost, usage, turns)."""
    reported = verdict.result if verdict is not None else None
    if reported is None:
        return AgentResult(status=status, text=text, session_id=session_id, duration_ms=duration_ms)
    return replace(
        reported,
        status=status,
        text=text,
        session_id=reported.session_id or session_id,
        duration_ms=duration_ms,
    )


class JsonLinesAgent(abc.ABC):
    """A :class:`~forgeline.ports.agent.CodeAgent` over a JSON-lines CLI (see the module).

    ``state_dir`` is where per-project state lives, as a path in the workspace;
    ``<state_dir>/<key>`` (see :meth:`AgentRequest.state_name`) is the agent home of one
    project, the only place besides its workdir a run may write (in a sandboxing
    workspace). ``environ`` is forgeline's own environment, from which the child's
    environment takes allow-listed variables. ``max_retries`` bounds the CLI's own retries
    of a model request. ``prices`` estimates the cost of CLIs that report none.
    """

    #: Shown in messages: the CLI's program name.
    label = "agent"
    #: Variables of forgeline's environment with these prefixes reach the CLI (its
    #: endpoint, key and own tuning), besides the allow-list.
    env_prefixes: tuple[str, ...] = ()
    #: What :meth:`capabilities` reports besides availability.
    permission_modes: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    cost_source = CostSource.ESTIMATED
    #: Extra variables of the availability check (``<binary> --version``).
    probe_env: Mapping[str, str] = MappingProxyType({})

    def __init__(
        self,
        *,
        workspace: Workspace,
        state_dir: str,
        binary: str = "",
        environ: Mapping[str, str] | None = None,
        max_retries: int = 2,
        line_limit: int = 64 * 1024 * 1024,
        idle_timeout_s: float = 600.0,
        raw_events: bool = False,
        interrupt_grace_s: float = 1.5,
        kill_grace_s: float = 1.0,
        prices: PriceTable | None = None,
    ) -> None:
        self._workspace = workspace
        self._state_dir = state_dir
        self._binary = binary or self.label  # the program's usual name, on PATH
        self._environ = dict(environ or {})
        self._max_retries = max_retries
        self._line_limit = line_limit
        self._idle_timeout_s = idle_timeout_s
        self._raw_events = raw_events
        # interrupt_grace_s + kill_grace_s + the kill's own SIGKILL wait stay under the
        # port's 5 s bound for cancel().
        self._interrupt_grace_s = interrupt_grace_s
        self._kill_grace_s = kill_grace_s
        self._prices = prices or PriceTable()
        self._totals = SessionTotals(workspace, self._environ)
        self._runs: dict[str, _Run] = {}
        self._precancelled: OrderedDict[str, None] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()

    # --- what a CLI supplies -------------------------------------------------------------

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The provider name."""

    @abc.abstractmethod
    def new_parser(self, request: AgentRequest) -> LineParser:
        """A parser for one run's lines."""

    @abc.abstractmethod
    async def prepare(self, request: AgentRequest, root: str) -> Launch:
        """Get the agent home ``root`` ready (directories, settings files) and say how to
        start the run."""

    def describe(
        self, available: bool, version: str | None, detail: str | None
    ) -> AgentCapabilities:
        """The provider's capabilities, given what the availability check found: resume,
        streaming, tokens and cancel, with the class's modes, models and cost source."""
        return AgentCapabilities(
            provider=self.name,
            available=available,
            version=version,
            detail=detail,
            permission_modes=self.permission_modes,
            models=self.models,
            cost=self.cost_source,
        )

    def version_env(self) -> dict[str, str]:
        """The environment of ``<binary> --version`` (the availability check)."""
        return child_env(self._environ, {}, prefixes=(), fixed=self.probe_env)

    def child_env(self, request: AgentRequest, fixed: Mapping[str, str]) -> dict[str, str]:
        """The run's whole environment (:func:`child_env` with this CLI's prefixes)."""
        return child_env(self._environ, request.env, prefixes=self.env_prefixes, fixed=fixed)

    async def carry_file(
        self, root: str, base: str, relative: str, project: str, *, then: Sequence[str] = ()
    ) -> None:
        """Copy ``<base>/<any project>/<relative>`` to ``<base>/<project>/<relative>``
        unless it is there: a session recorded from one checkout, made visible from
        another (every attempt of a build has a checkout of its own, and the CLIs file
        sessions by working directory). ``then`` is a command run on the copy (its path
        appended). A failure is left for the CLI to report."""
        script = (
            'dest="$1/$3/$2"; [ -f "$dest" ] && exit 0; shift 3; '
            'for f in "$base"/*/"$rel"; do [ -f "$f" ] || continue; '
            'mkdir -p "$(dirname "$dest")" && cp -p "$f" "$dest" && '
            '{ [ $# -eq 0 ] || "$@" "$dest"; }; exit $?; done; exit 0'
        )
        script = 'base="$1"; rel="$2"; ' + script
        argv = ["sh", "-c", script, "forgeline-carry-session", base, relative, project, *then]
        await self.run_in_home(root, argv)

    async def run_in_home(self, root: str, argv: list[str]) -> None:
        """Run a short preparation command that may write the agent home ``root`` only;
        a failure is logged (the CLI then says what is missing)."""
        env = {"PATH": self._environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")}
        result = await self._workspace.run(argv, cwd="/", env=env, timeout_s=30.0, writable=(root,))
        if not result.ok:
            log.warning("agent.home_not_prepared", argv=argv[:4], error=result.stderr_tail(3))

    async def write_settings(self, root: str, path: str, settings: Mapping[str, Any]) -> None:
        """Write ``settings`` as JSON to ``path`` (relative to the agent home ``root``)."""
        search_path = self._environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        content = json.dumps(settings, indent=2)
        await write_file(self._workspace, f"{root}/{path}", content, root, search_path)

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
        """``<binary> --version`` through the workspace, bounded by the availability
        timeout."""
        available, version, detail = False, None, None
        try:
            async with asyncio.timeout(DEFAULT_AVAILABILITY_TIMEOUT):
                out = await self._workspace.run(
                    [self._binary, "--version"],
                    cwd="/",
                    env=self.version_env(),
                    timeout_s=DEFAULT_AVAILABILITY_TIMEOUT * 0.9,
                )
        except WorkspaceError as exc:
            detail = exc.message
        except TimeoutError:
            detail = f"{self._binary} --version did not answer in time"
        else:
            text = out.stdout.decode(errors="replace").strip()
            if out.ok and text:
                words = [w for w in text.split() if any(c.isdigit() for c in w)]
                available, detail = True, self._binary
                version = words[0] if words else text.split()[0]
            else:
                reason = (out.stderr_tail(3) or text)[:300]
                detail = f"{self._binary} --version exited {out.exit_code}: {reason}"
        return self.describe(available, version, detail)

    async def aclose(self) -> None:
        """Cancel every run still going (a shutdown); idempotent."""
        await asyncio.gather(*(self.cancel(run_id) for run_id in list(self._runs)))

    # --- one run -------------------------------------------------------------------------

    def _result_event(self, result: AgentResult) -> AgentEvent:
        return AgentEvent(data=result, provider=self.name, session_id=result.session_id)

    def _error_event(self, kind: str, message: str, session_id: str | None) -> AgentEvent:
        return AgentEvent(
            data=ErrorData(kind=kind, message=message), provider=self.name, session_id=session_id
        )

    def home(self, request: AgentRequest) -> str:
        """The project's agent home: ``<state_dir>/<state name>``, a path in the workspace."""
        return f"{self._state_dir.rstrip('/')}/{request.state_name()}"

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
        feed = _Feed(run, self.new_parser(request))
        root = self.home(request)
        try:
            launch = await self.prepare(request, root)
            before = Usage()
            if launch.cumulative_usage and request.resume_session:
                before = await self._totals.load(root, request.resume_session)
            proc = await self._spawn(run, request, launch, root)
        except WorkspaceError as exc:
            run.reaped.set()
            yield self._error_event("spawn_failed", exc.message, None)
            yield self._result_event(
                AgentResult(
                    status=RunStatus.FAILED,
                    text=f"{self.label} could not start: {exc.message}",
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
        prefix = f"{self.name}-{run.run_id}"
        tasks.append(loop.create_task(self._read(run, proc), name=f"{prefix}-read"))
        tasks.append(loop.create_task(self._watch(run, proc), name=f"{prefix}-exit"))
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
        if launch.cumulative_usage:
            await self._own_usage(feed.parser, root, before)
        async with contextlib.aclosing(self._conclude(run, request, feed, proc)) as events:
            async for event in events:
                yield event

    async def _own_usage(self, parser: LineParser, root: str, before: Usage) -> None:
        """Turn the cumulative usage of the verdict into this run's, recording the new
        total for the session's next resume."""
        verdict = parser.verdict
        session = (verdict.result.session_id if verdict else None) or parser.session_id
        total = verdict.result.usage if verdict is not None else Usage()
        if verdict is None or not session or total == Usage():
            return  # nothing reported (a failed turn): the recorded total stands
        with contextlib.suppress(WorkspaceError):
            await self._totals.store(root, session, total)
        own = replace(verdict.result, usage=subtract(total, before))
        parser.verdict = replace(verdict, result=own)

    async def _spawn(
        self, run: _Run, request: AgentRequest, launch: Launch, root: str
    ) -> Process | None:
        """Start the CLI (unless already stopped)."""
        if run.stop_status is None:
            run.proc = await self._workspace.spawn(
                launch.argv,
                cwd=request.workdir,
                env=launch.env,
                line_limit=self._line_limit,
                writable=(request.workdir, root, *launch.writable),
            )
        return run.proc

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

    def _priced(self, result: AgentResult, model: str | None) -> AgentResult:
        """``result`` with a cost: the CLI's own, else estimated from the price table."""
        if result.cost_source is CostSource.REPORTED:
            return result
        cost = self._prices.estimate(model, result.usage)
        if cost is None:
            return replace(result, cost_usd=0.0, cost_source=CostSource.NONE)
        return replace(result, cost_usd=cost, cost_source=CostSource.ESTIMATED)

    async def _conclude(
        self, run: _Run, request: AgentRequest, feed: _Feed, proc: Process
    ) -> AsyncGenerator[AgentEvent, None]:
        """Decide the one result event (and the error events that explain it)."""
        duration_ms = int((asyncio.get_running_loop().time() - feed.started) * 1000)
        parser = feed.parser
        session_id = parser.session_id
        verdict = parser.verdict
        model = (verdict.model if verdict else None) or request.model
        if verdict is not None:
            verdict = replace(verdict, result=self._priced(verdict.result, model))
        if parser.unknown or parser.bad_lines:
            log.debug(
                "agent.run.tolerated",
                run_id=run.run_id,
                unknown=dict(parser.unknown),
                bad_lines=parser.bad_lines,
            )
        final: AgentResult
        if run.read_error is not None and not feed.result_first:
            message = f"{self.label} output broke the protocol: {run.read_error.message}"
            if isinstance(run.read_error, LineTooLongError):
                message = (
                    f"{self.label} printed a line longer than the {run.read_error.limit}-byte "
                    "limit (agent_line_limit); the run was stopped"
                )
            yield self._error_event("protocol", message, session_id)
            final = _own_result(RunStatus.FAILED, message, verdict, session_id, duration_ms)
        elif run.stop_status is not None and not feed.result_first:
            final = _own_result(run.stop_status, run.stop_text, verdict, session_id, duration_ms)
        elif verdict is not None:
            final = verdict.result
            if not final.duration_ms:
                final = replace(final, duration_ms=duration_ms)
            if verdict.is_error and not feed.saw_error:
                kind = verdict.error_kind
                yield self._error_event(kind, final.text or kind, session_id)
            for note in verdict.notes:
                yield self._error_event(note.kind, note.message, session_id)
            budget = request.max_cost_usd
            if budget is not None and final.cost_usd > budget and final.succeeded:
                message = f"cost {final.cost_usd:g} USD passed the budget of {budget:g} USD"
                yield self._error_event("budget_exceeded", message, session_id)
                final = _own_result(
                    RunStatus.FAILED, message, verdict, session_id, final.duration_ms
                )
        else:
            tail = proc.stderr_tail(10)
            message = f"{self.label} exited with code {proc.returncode} without a result"
            if tail:
                message += f"; stderr: {tail}"
            yield self._error_event("process_exited", message, session_id)
            final = _own_result(RunStatus.FAILED, message, None, session_id, duration_ms)
        log.debug(
            "agent.run.finished",
            provider=self.name,
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
                self._terminate(run.proc), name=f"{self.name}-stop-{run.run_id}"
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
