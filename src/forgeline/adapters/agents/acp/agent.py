"""AcpAgent: any agent that speaks the Agent Client Protocol, as a forgeline provider.

One run is one agent process (``FORGELINE_ACP_AGENTS`` names its command), started in the
sandbox through :meth:`~forgeline.ports.workspace.DuplexWorkspace.spawn_duplex` with an
explicit environment (:func:`build_child_env`), and one conversation over its stdio, held
with the ``agent-client-protocol`` SDK's client connection on a transport of our own
(:mod:`.transport`):

1. ``initialize`` (protocol version 1; forgeline offers no file-system or terminal methods:
   the agent uses its own tools, inside the sandbox);
2. ``session/new`` with the attempt's checkout as cwd, or ``session/load`` of
   ``resume_session`` where the agent advertises ``loadSession`` (the history it replays is
   not this run's and is not emitted); else the run fails saying it cannot resume;
3. ``session/set_config_option`` of the agent's model option when the request names a model;
4. ``session/prompt``; its ``session/update`` notifications become normalized events
   (:mod:`.mapping`) and its ``session/request_permission`` calls are answered by the
   permission mode (:data:`PERMISSION_MODES`).

The run ends with exactly one ``result``: the prompt's stop reason (``end_turn`` succeeds);
``failed`` with the agent's own message when a request fails (a model API error comes back
as the prompt's JSON-RPC error), when the agent exits or its output breaks the protocol
(a message over the line limit), or when the reported cost passes ``max_cost_usd``;
``cancelled`` / ``timed_out`` after :meth:`AcpAgent.cancel`, the consumer leaving, or the
wall-clock / idle limit. Stopping sends ``session/cancel`` and gives the agent
``cancel_grace_s`` to answer, then the workspace ends the whole process tree (an npm
wrapper's native child included), whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
from acp import PROTOCOL_VERSION, Client, RequestError, connect_to_agent
from acp.client.connection import ClientSideConnection
from acp.schema import (
    AllowedOutcome,
    ClientCapabilities,
    DeniedOutcome,
    FileSystemCapabilities,
    Implementation,
    InitializeResponse,
    PermissionOption,
    PromptResponse,
    RequestPermissionResponse,
    SessionConfigOptionSelect,
    TextContentBlock,
    ToolCallUpdate,
    UsageUpdate,
)

import forgeline
from forgeline.adapters._aio import finish_despite_cancel
from forgeline.adapters.agents.acp.mapping import NAME_LIMIT, UpdateTranslator
from forgeline.adapters.agents.acp.transport import ProcessTransport
from forgeline.adapters.agents.environment import child_env
from forgeline.domain.agent import (
    DEFAULT_AVAILABILITY_TIMEOUT,
    AgentCapabilities,
    AgentEvent,
    AgentRequest,
    AgentResult,
    ErrorData,
    EventData,
    InitData,
    RunStatus,
    StatusData,
    Usage,
)
from forgeline.domain.errors import WorkspaceError
from forgeline.ports.workspace import DuplexProcess, DuplexWorkspace, Workspace

log = structlog.get_logger(__name__)

#: How permission requests are answered, by the tool kinds ACP names. Runs are unattended:
#: nobody can be asked, so what a mode does not allow is refused (the agent is told so and
#: usually carries on without the tool).
PERMISSION_MODES: Mapping[str, frozenset[str] | None] = {
    "bypassPermissions": None,  # every tool
    "acceptEdits": frozenset({"read", "search", "think", "edit", "delete", "move"}),
    "default": frozenset({"read", "search", "think"}),
}

#: Model providers' variables are handed on, so an operator's keys and gateways
#: (``OPENAI_BASE_URL``, ``GEMINI_API_KEY``) reach whichever CLI speaks ACP.
ENV_PASS_PREFIXES = (
    "OPENAI_",
    "ANTHROPIC_",
    "GOOGLE_",
    "GEMINI_",
    "OPENROUTER_",
    "AZURE_",
    "AWS_",
    "MISTRAL_",
    "GROQ_",
    "DEEPSEEK_",
    "XAI_",
    "DASHSCOPE_",
)

#: Events read ahead of the consumer before the agent's output is left unread.
_READ_AHEAD = 256
#: After the prompt's answer, how long the agent may take to exit once its stdin closed.
_EXIT_WAIT_S = 2.0
#: How long :meth:`AcpAgent.capabilities` waits for a handshake (within the port's bound).
_PROBE_WAIT_S = DEFAULT_AVAILABILITY_TIMEOUT * 0.8
#: How long a handshake may take before the agent is reported unavailable.
_PROBE_TIMEOUT_S = 60.0
#: How long a successful probe is trusted: it starts the agent, seconds of CPU.
_PROBE_TTL_S = 60.0
#: Run ids remembered for cancel-before-start and cancel-after-end.
_REMEMBERED_RUNS = 4096
#: Stop reasons of a prompt that are failures, with their ``error`` kinds.
_FAILED_STOPS = {
    "max_tokens": "max_tokens",
    "max_turn_requests": "max_turns",
    "refusal": "refusal",
}


def build_child_env(
    environ: Mapping[str, str],
    request_env: Mapping[str, str],
    *,
    home: str,
    pass_env: Sequence[str] = (),
) -> dict[str, str]:
    """The agent's whole environment; nothing is inherited implicitly (the SDK's own
    spawn would pass a trimmed copy of ours, where API keys silently do not arrive).

    In order, later wins: the allow-list and the provider variables of forgeline's
    ``environ``; the variables the operator named for this agent (``pass_env``); the
    build's credentials (``request_env``); then ``HOME`` and the ``XDG_*`` directories
    under the project's agent home, so sessions persist per project and can be loaded.
    """
    named = {k: environ[k] for k in pass_env if k in environ}
    fixed = {
        "HOME": home,
        "XDG_CONFIG_HOME": f"{home}/.config",
        "XDG_DATA_HOME": f"{home}/.local/share",
        "XDG_CACHE_HOME": f"{home}/.cache",
        "XDG_STATE_HOME": f"{home}/.local/state",
    }
    return child_env(environ, {**named, **request_env}, prefixes=ENV_PASS_PREFIXES, fixed=fixed)


def choose_permission(
    mode: str, kind: str | None, options: Sequence[PermissionOption]
) -> tuple[bool, RequestPermissionResponse]:
    """Whether ``mode`` allows a tool of ``kind``, and the answer that says so: the agent's
    one-time option of that sense (its "always" one only if it offers no other), else a
    cancelled outcome (a refusal every agent understands)."""
    allowed_kinds = PERMISSION_MODES[mode]
    allowed = allowed_kinds is None or (kind or "other") in allowed_kinds
    wanted = ("allow_once", "allow_always") if allowed else ("reject_once", "reject_always")
    for option_kind in wanted:
        for option in options:
            if option.kind == option_kind:
                outcome = AllowedOutcome(outcome="selected", option_id=option.option_id)
                return allowed, RequestPermissionResponse(outcome=outcome)
    return allowed, RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))


def _remember(store: OrderedDict[str, None], run_id: str) -> None:
    store[run_id] = None
    store.move_to_end(run_id)
    while len(store) > _REMEMBERED_RUNS:
        store.popitem(last=False)


class _Refused(Exception):  # noqa: N818 - a run's end, not a programming error
    """The conversation cannot go on: an ``error`` kind and a message for the user."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(eq=False)
class _Run:
    """One run's state, shared by its generator, the SDK's handlers and cancel()."""

    request: AgentRequest
    translator: UpdateTranslator = field(default_factory=UpdateTranslator)
    proc: DuplexProcess | None = None
    session_id: str | None = None
    #: True while ``session/load`` replays history (not this run's events).
    loading: bool = False
    #: The session's cost before this run's prompt (a loaded session's earlier turns).
    cost_before: float | None = None
    pending: deque[EventData] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    space: asyncio.Event = field(default_factory=asyncio.Event)
    last_output: float = 0.0
    #: Set once, by cancel, a timeout or a limit: how the run will end.
    stop_status: RunStatus | None = None
    stop_text: str = ""
    stop_error: ErrorData | None = None
    #: A broken stream (oversized message, lost output): the run fails with it.
    fatal: ErrorData | None = None
    stop_task: asyncio.Task[int | None] | None = None
    reaped: asyncio.Event = field(default_factory=asyncio.Event)
    transport: ProcessTransport | None = None

    def push(self, data: EventData) -> None:
        """Queue a payload for the consumer and wake the generator."""
        self.pending.append(data)
        self.wake.set()

    def request_stop(self, status: RunStatus, text: str, error: ErrorData | None = None) -> None:
        """Decide how the run ends (first caller wins) and wake its generator."""
        if self.stop_status is None:
            self.stop_status, self.stop_text, self.stop_error = status, text, error
        self.wake.set()

    def report(self, kind: str, message: str, fatal: bool) -> None:
        """A problem with the agent's output (see :class:`ProcessTransport`)."""
        if fatal:
            if self.fatal is None:
                self.fatal = ErrorData(kind, message)
            self.wake.set()
        else:
            self.push(ErrorData(kind, message))

    async def room(self) -> None:
        """Return when the consumer has room for more."""
        while len(self.pending) >= _READ_AHEAD:
            self.space.clear()
            await self.space.wait()

    def heard(self) -> None:
        """The agent said something (the idle timeout starts again)."""
        self.last_output = asyncio.get_running_loop().time()


class _ClientSide:
    """What forgeline answers to the agent: updates and permission requests of one run.

    File-system and terminal methods are absent on purpose (and not advertised): the SDK
    answers them "method not found"; agents use their own tools inside the sandbox.
    """

    def __init__(self, run: _Run, mode: str) -> None:
        self._run = run
        self._mode = mode

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        """Map one ``session/update`` into the run's events."""
        run = self._run
        if run.session_id is not None and session_id != run.session_id:
            return  # not this run's session: nothing of ours
        if run.loading:
            # The replayed history of a loaded session: only its cost matters (the
            # cumulative figure this run's cost is measured from).
            if isinstance(update, UsageUpdate) and update.cost is not None:
                run.cost_before = update.cost.amount
            return
        for data in run.translator.on_update(update):
            run.push(data)
        budget = run.request.max_cost_usd
        spent = self._spent()
        if budget is not None and spent is not None and spent > budget:
            message = f"cost {spent:g} USD passed the budget of {budget:g} USD"
            run.request_stop(RunStatus.FAILED, message, ErrorData("budget_exceeded", message))

    def _spent(self) -> float | None:
        total = self._run.translator.cost_usd
        if total is None:
            return None
        return max(0.0, total - (self._run.cost_before or 0.0))

    async def request_permission(
        self,
        session_id: str,
        tool_call: ToolCallUpdate,
        options: list[PermissionOption],
        **kwargs: Any,
    ) -> RequestPermissionResponse:
        """Answer by the permission mode, visibly (see :func:`choose_permission`)."""
        allowed, answer = choose_permission(self._mode, tool_call.kind, options)
        tool = (tool_call.title or tool_call.kind or "tool")[:NAME_LIMIT]
        self._run.push(
            StatusData(
                state="permission",
                detail={
                    "tool": tool,
                    "kind": tool_call.kind or "other",
                    "decision": "allowed" if allowed else "refused",
                    "mode": self._mode,
                },
            )
        )
        if not allowed:
            self._run.push(
                ErrorData(
                    "permission_denied",
                    f"tool use refused by the permission mode {self._mode}: {tool}",
                )
            )
        return answer


class AcpAgent:
    """One ACP agent (a name and a command) as a :class:`~forgeline.ports.agent.CodeAgent`.

    ``workspace`` must offer :class:`DuplexWorkspace` (forgeline's three do); one that
    does not makes the provider report itself unavailable. ``state_dir`` holds per-project
    homes: ``<state_dir>/<state name>/home`` is the agent's ``HOME`` (its sessions live
    there, so ``session/load`` finds them from a later build's checkout). ``pass_env``
    names more variables of ``environ`` the agent gets (its own configuration).
    """

    def __init__(
        self,
        *,
        name: str,
        command: Sequence[str],
        workspace: Workspace,
        state_dir: str,
        environ: Mapping[str, str] | None = None,
        pass_env: Sequence[str] = (),
        permission_mode: str = "bypassPermissions",
        line_limit: int = 64 * 1024 * 1024,
        idle_timeout_s: float = 600.0,
        cancel_grace_s: float = 1.5,
        kill_grace_s: float = 1.0,
    ) -> None:
        if permission_mode not in PERMISSION_MODES:
            raise ValueError(f"unknown permission mode {permission_mode!r}")
        if not command:
            raise ValueError("an ACP agent needs a command")
        self._name = name
        self._command = tuple(command)
        self._workspace = workspace
        self._state_dir = state_dir.rstrip("/")
        self._environ = dict(environ or {})
        self._pass_env = tuple(pass_env)
        self._permission_mode = permission_mode
        self._line_limit = line_limit
        self._idle_timeout_s = idle_timeout_s
        # cancel_grace_s + kill_grace_s + the kill's own SIGKILL wait stay under the
        # port's 5 s bound for cancel().
        self._cancel_grace_s = cancel_grace_s
        self._kill_grace_s = kill_grace_s
        self._runs: dict[str, _Run] = {}
        self._precancelled: OrderedDict[str, None] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        #: The agent's last self-description and when it was learnt (by a probe or a run).
        self._known: tuple[float, InitializeResponse] | None = None
        self._probing: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        """The name the operator gave the agent in ``FORGELINE_ACP_AGENTS``."""
        return self._name

    # --- the port ------------------------------------------------------------------------

    def execute(self, request: AgentRequest) -> AsyncGenerator[AgentEvent, None]:
        """Validate ``request`` (raising at once if it can never run), then stream its run."""
        request.validate()
        return self._events(request)

    async def cancel(self, run_id: str) -> None:
        """Stop the run (``session/cancel``, then its processes end) and return once they
        are gone, within about 5 s. Before the run started it is remembered, and the run
        then ends at once as ``cancelled``; after it ended this is a no-op."""
        run = self._runs.get(run_id)
        if run is None:
            if run_id not in self._finished:
                _remember(self._precancelled, run_id)
            return
        run.request_stop(RunStatus.CANCELLED, "cancelled")
        # The run's generator sends session/cancel and waits for the agent; if nobody is
        # iterating it, the grace passes and the processes are ended from here.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._cancel_grace_s + 0.2):
                await asyncio.shield(run.reaped.wait())
        if run.proc is None:
            # Still starting: the generator sees the stop right after the spawn and ends
            # what it started.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.0):
                    await asyncio.shield(run.reaped.wait())
            return
        await self._kill(run)

    async def capabilities(self) -> AgentCapabilities:
        """What the agent says of itself in an ``initialize`` handshake (in the sandbox,
        trusted for a minute): resume only when it offers ``session/load``; cost and tokens
        only as far as it reports them.

        A cold agent can take longer to answer than the availability bound (opencode sets
        up its home first), so the handshake runs as a task of its own: past the bound the
        answer is whether the program can be found, with resume not known yet, and the
        handshake's own answer serves the next call.
        """
        loop = asyncio.get_running_loop()
        if self._known is not None and loop.time() - self._known[0] <= _PROBE_TTL_S:
            return self._capabilities(self._known[1], None)
        if self._probing is None or self._probing.done():
            self._probing = loop.create_task(self._probe(), name=f"acp-probe-{self.name}")
        done, _ = await asyncio.wait({self._probing}, timeout=_PROBE_WAIT_S)
        if not done:
            return self._unprobed()
        exc = self._probing.exception()
        if exc is not None:
            message = exc.message if isinstance(exc, _Refused) else repr(exc)[:500]
            return self._capabilities(None, message)
        assert self._known is not None  # noqa: S101 - a successful probe sets it
        return self._capabilities(self._known[1], None)

    async def aclose(self) -> None:
        """Cancel every run still going and a handshake in progress (a shutdown);
        idempotent."""
        probing, self._probing = self._probing, None
        if probing is not None and not probing.done():
            probing.cancel()
            await asyncio.wait({probing})
        await asyncio.gather(*(self.cancel(run_id) for run_id in list(self._runs)))

    # --- capabilities --------------------------------------------------------------------

    def _capabilities(
        self, init: InitializeResponse | None, problem: str | None
    ) -> AgentCapabilities:
        if init is None:
            return AgentCapabilities(
                provider=self.name,
                available=False,
                detail=problem,
                resume=False,
                permission_modes=tuple(PERMISSION_MODES),
            )
        resume = bool(init.agent_capabilities and init.agent_capabilities.load_session)
        info = init.agent_info
        who = f"{info.name} " if info is not None and info.name else ""
        notes = [
            f"{who}over ACP v{init.protocol_version} ({' '.join(self._command)})",
            "resume via session/load" if resume else "no resume: the agent offers no session/load",
            "cost only if the agent reports it (usage_update), else 0",
            "tokens only if its prompt answers carry usage",
            "no max_turns",
        ]
        return AgentCapabilities(
            provider=self.name,
            available=True,
            version=info.version if info is not None else None,
            detail="; ".join(notes),
            resume=resume,
            streaming=True,
            permission_modes=tuple(PERMISSION_MODES),
            models=(),
        )

    def _unprobed(self) -> AgentCapabilities:
        """Availability from the program alone (the handshake is still going)."""
        if not isinstance(self._workspace, DuplexWorkspace):
            return self._capabilities(None, self._no_stdio())
        path = build_child_env(self._environ, {}, home="/").get("PATH")
        if shutil.which(self._command[0], path=path) is None:
            return self._capabilities(None, f"program {self._command[0]!r} not found")
        return AgentCapabilities(
            provider=self.name,
            available=True,
            detail="the agent has not answered initialize yet: resume and version not known",
            resume=False,
            permission_modes=tuple(PERMISSION_MODES),
        )

    def _no_stdio(self) -> str:
        return f"the {self._workspace.name} workspace cannot run ACP agents (no stdio)"

    async def _probe(self) -> None:
        """Start the agent in a probe home, ``initialize``, and end it."""
        if not isinstance(self._workspace, DuplexWorkspace):
            raise _Refused("unavailable", self._no_stdio())
        probe = AgentRequest(prompt="probe", workdir=f"{self._state_dir}/probe/home")
        run = _Run(probe)
        try:
            proc = await self._spawn(run, probe, f"{self._state_dir}/probe")
        except WorkspaceError as exc:
            raise _Refused("spawn_failed", exc.message) from exc
        run.proc = proc
        conn = self._connect(run, proc)
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                await self._initialize(conn)
        except (RequestError, ConnectionError, WorkspaceError, TimeoutError) as exc:
            tail = proc.stderr_tail(3)
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {_PROBE_TIMEOUT_S:g} s"
            raise _Refused(
                "unavailable", f"initialize failed: {reason}; {tail}".strip("; ")
            ) from exc
        finally:
            try:
                await self._close(conn)
            finally:  # even when cancelled while closing: the process must end
                await self._kill(run)

    # --- one run ---------------------------------------------------------------------------

    async def _events(self, request: AgentRequest) -> AsyncGenerator[AgentEvent, None]:
        run_id = request.run_id
        if run_id in self._precancelled:
            del self._precancelled[run_id]
            _remember(self._finished, run_id)
            yield self._event(
                AgentResult(status=RunStatus.CANCELLED, text="cancelled before it started"), None
            )
            return
        if run_id in self._runs:
            yield self._event(ErrorData("duplicate_run", f"run {run_id} is already running"), None)
            yield self._event(
                AgentResult(status=RunStatus.FAILED, text=f"run id {run_id} is already running"),
                None,
            )
            return
        run = _Run(request)
        self._runs[run_id] = run
        try:
            async with contextlib.aclosing(self._drive(run)) as events:
                async for event in events:
                    yield event
        finally:
            # Normal end, aclose() by the consumer, cancellation of the consuming task:
            # no process of the run outlives this block.
            try:
                await self._kill(run)
            finally:
                run.reaped.set()
                self._runs.pop(run_id, None)
                _remember(self._finished, run_id)

    def _event(self, data: EventData, session_id: str | None) -> AgentEvent:
        return AgentEvent(data=data, provider=self.name, session_id=session_id)

    async def _drive(self, run: _Run) -> AsyncGenerator[AgentEvent, None]:
        request = run.request
        loop = asyncio.get_running_loop()
        started = loop.time()
        run.last_output = started
        if not isinstance(self._workspace, DuplexWorkspace):
            message = self._no_stdio()
            yield self._event(ErrorData("spawn_failed", message), None)
            yield self._event(AgentResult(status=RunStatus.FAILED, text=message), None)
            return
        if run.stop_status is not None:  # cancelled while it was being set up
            yield self._event(AgentResult(status=run.stop_status, text=run.stop_text), None)
            return
        try:
            proc = await self._spawn(run, request, f"{self._state_dir}/{request.state_name()}")
        except WorkspaceError as exc:
            message = f"{self._command[0]} could not start: {exc.message}"
            yield self._event(ErrorData("spawn_failed", exc.message), None)
            yield self._event(AgentResult(status=RunStatus.FAILED, text=message), None)
            return
        run.proc = proc
        if run.stop_status is not None:  # cancelled during the spawn
            await self._kill(run)
            yield self._event(AgentResult(status=run.stop_status, text=run.stop_text), None)
            return
        log.debug("agent.run.started", provider=self.name, run_id=request.run_id, pid=proc.pid)
        conn = self._connect(run, proc)
        talk = loop.create_task(self._converse(run, conn), name=f"acp-talk-{request.run_id}")
        try:
            async with contextlib.aclosing(self._follow(run, talk, started)) as events:
                async for event in events:
                    yield event
            if run.stop_status is not None and not talk.done():
                await self._interrupt(run, conn, talk)
        finally:
            if not talk.done():
                talk.cancel()
            try:
                await asyncio.wait({talk})
                await self._close(conn)
            finally:  # even when cancelled meanwhile: the process must end
                await self._kill(run)
        for data in (*run.pending, *run.translator.flush()):
            yield self._event(data, run.session_id)
        run.pending.clear()
        final = self._conclude(run, talk, int((loop.time() - started) * 1000))
        if isinstance(final, tuple):
            yield self._event(final[0], run.session_id)
            final = final[1]
        log.debug(
            "agent.run.finished",
            provider=self.name,
            run_id=request.run_id,
            status=final.status.value,
            exit_code=proc.returncode,
            ignored=dict(run.translator.ignored),
            unknown=dict(run.transport.unknown) if run.transport is not None else {},
        )
        yield self._event(final, run.session_id)

    async def _spawn(self, run: _Run, request: AgentRequest, root: str) -> DuplexProcess:
        """Make the project's agent home and start the agent in the sandbox, which may
        write the run's checkout and that home only."""
        assert isinstance(self._workspace, DuplexWorkspace)  # noqa: S101 - checked by callers
        home = f"{root}/home"
        await self._workspace.ensure_dir(home)
        env = build_child_env(self._environ, request.env, home=home, pass_env=self._pass_env)
        writable = (request.workdir, root) if request.workdir != home else (root,)
        return await self._workspace.spawn_duplex(
            list(self._command),
            cwd=request.workdir,
            env=env,
            line_limit=self._line_limit,
            writable=writable,
        )

    def _connect(self, run: _Run, proc: DuplexProcess) -> ClientSideConnection:
        transport = ProcessTransport(proc, report=run.report, room=run.room, heard=run.heard)
        run.transport = transport
        client = cast("Client", _ClientSide(run, self._permission_mode))
        return connect_to_agent(client, transport)

    async def _initialize(self, conn: ClientSideConnection) -> InitializeResponse:
        init: InitializeResponse = await conn.initialize(
            protocol_version=PROTOCOL_VERSION,
            client_capabilities=ClientCapabilities(
                fs=FileSystemCapabilities(read_text_file=False, write_text_file=False),
                terminal=False,
            ),
            client_info=Implementation(name="forgeline", version=forgeline.__version__),
        )
        self._known = (asyncio.get_running_loop().time(), init)
        return init

    async def _converse(self, run: _Run, conn: ClientSideConnection) -> PromptResponse:
        """The conversation of one run, up to the prompt's answer."""
        request = run.request
        init = await self._initialize(conn)
        options: Sequence[object]
        if request.resume_session:
            if not (init.agent_capabilities and init.agent_capabilities.load_session):
                raise _Refused(
                    "resume_unsupported",
                    f"{self.name} cannot resume session {request.resume_session}: the agent"
                    " does not offer session/load",
                )
            run.session_id = request.resume_session
            run.loading = True
            try:
                loaded = await conn.load_session(
                    cwd=request.workdir, session_id=request.resume_session, mcp_servers=[]
                )
                # The replay's notifications were queued before the answer: let them run.
                await asyncio.sleep(0)
            except RequestError as exc:
                raise _Refused(
                    "resume_failed",
                    f"{self.name} could not load session {request.resume_session}: "
                    + _request_error_text(exc),
                ) from exc
            finally:
                run.loading = False
            options = (loaded.config_options if loaded is not None else None) or ()
        else:
            session = await conn.new_session(cwd=request.workdir, mcp_servers=[])
            run.session_id = session.session_id
            options = session.config_options or ()
        model = await self._choose_model(run, conn, options)
        run.push(InitData(model=model, cwd=request.workdir, tools=()))
        answer: PromptResponse = await conn.prompt(
            session_id=run.session_id,
            prompt=[TextContentBlock(type="text", text=request.prompt)],
        )
        return answer

    async def _choose_model(
        self, run: _Run, conn: ClientSideConnection, options: Sequence[object]
    ) -> str | None:
        """Select the request's model through the agent's model option; the model in use."""
        option = next(
            (
                o
                for o in options
                if isinstance(o, SessionConfigOptionSelect)
                and (o.category == "model" or o.id == "model")
            ),
            None,
        )
        model = run.request.model
        if not model:
            return option.current_value if option is not None else None
        if option is None:
            raise _Refused("model", f"{self.name} offers no model choice; cannot use {model!r}")
        assert run.session_id is not None  # noqa: S101 - set by the caller
        try:
            await conn.set_config_option(
                config_id=option.id, session_id=run.session_id, value=model
            )
        except RequestError as exc:
            raise _Refused("model", f"{self.name} refused the model {model!r}: {exc}") from exc
        return model

    async def _follow(
        self, run: _Run, talk: asyncio.Task[PromptResponse], started: float
    ) -> AsyncGenerator[AgentEvent, None]:
        """Yield the run's events until the conversation ends, breaks, times out or is
        stopped."""
        loop = asyncio.get_running_loop()
        request = run.request
        idle_s = request.idle_timeout_s or self._idle_timeout_s
        wall_deadline = started + request.timeout_s
        talk.add_done_callback(lambda _: run.wake.set())
        while True:
            while run.pending:
                data = run.pending.popleft()
                run.space.set()
                yield self._event(data, run.session_id)
            if talk.done() or run.stop_status is not None or run.fatal is not None:
                return
            now = loop.time()
            if now >= wall_deadline:
                run.request_stop(RunStatus.TIMED_OUT, f"timed out after {request.timeout_s:g} s")
                return
            if now >= run.last_output + idle_s:
                run.request_stop(RunStatus.TIMED_OUT, f"no output for {idle_s:g} s")
                return
            run.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wall_deadline, run.last_output + idle_s) - now):
                    await run.wake.wait()

    async def _interrupt(
        self, run: _Run, conn: ClientSideConnection, talk: asyncio.Task[PromptResponse]
    ) -> None:
        """``session/cancel``, and the agent's answer to the prompt awaited for a while."""
        if run.session_id is not None:
            with contextlib.suppress(Exception):  # a dead agent cannot be told anything
                async with asyncio.timeout(self._cancel_grace_s / 2):
                    await conn.cancel(session_id=run.session_id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._cancel_grace_s):
                await asyncio.wait({talk})

    async def _close(self, conn: ClientSideConnection) -> None:
        """Close the SDK's connection (its tasks), bounded: the process end follows."""
        with contextlib.suppress(Exception, TimeoutError):
            async with asyncio.timeout(1.0):
                await conn.close()

    async def _kill(self, run: _Run) -> None:
        """End the run's processes (shared, bounded, finished despite cancellation)."""
        proc = run.proc
        if proc is None:
            return
        if run.stop_task is None:
            # A run that ended on its own may exit in its own time; a stopped one may not.
            patient = run.stop_status is None and run.fatal is None
            run.stop_task = asyncio.get_running_loop().create_task(
                self._terminate(proc, patient), name=f"acp-stop-{run.request.run_id}"
            )
        await finish_despite_cancel(run.stop_task)

    async def _terminate(self, proc: DuplexProcess, patient: bool) -> int | None:
        if proc.returncode is None and patient:
            # Its stdin closed, an agent that finished exits on its own.
            proc.close_stdin()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_EXIT_WAIT_S):
                    await proc.wait()
        # Always: the agent may be gone while its tools' processes (or an npm wrapper's
        # native child) live on.
        return await proc.kill(self._kill_grace_s)

    def _conclude(
        self, run: _Run, talk: asyncio.Task[PromptResponse], duration_ms: int
    ) -> AgentResult | tuple[ErrorData, AgentResult]:
        """The one result (and the error event that explains it, if any)."""
        translator = run.translator
        cost_before = run.cost_before or 0.0
        cost = max(0.0, translator.cost_usd - cost_before) if translator.cost_usd else 0.0

        def result(status: RunStatus, text: str, usage: Usage | None = None) -> AgentResult:
            return AgentResult(
                status=status,
                text=text,
                session_id=run.session_id,
                num_turns=1 if run.session_id else 0,
                duration_ms=duration_ms,
                cost_usd=cost,
                usage=usage or Usage(),
            )

        answer = (
            talk.result() if talk.done() and not talk.cancelled() and not talk.exception() else None
        )
        if run.fatal is not None and answer is None:
            return run.fatal, result(RunStatus.FAILED, run.fatal.message)
        # A limit's stop (the budget) holds even if the agent finished meanwhile.
        limit = run.stop_status is RunStatus.FAILED
        if run.stop_status is not None and (
            answer is None or answer.stop_reason == "cancelled" or limit
        ):
            text = run.stop_text
            if run.stop_error is not None:
                return run.stop_error, result(run.stop_status, text)
            return result(run.stop_status, text)
        if answer is None:
            return self._failure(run, talk, result)
        return self._answered(answer, translator.last_message, result)

    @staticmethod
    def _answered(
        answer: PromptResponse, text: str, result: Callable[..., AgentResult]
    ) -> AgentResult | tuple[ErrorData, AgentResult]:
        """The result the prompt's stop reason gives."""
        usage = _usage(answer)
        if answer.stop_reason == "end_turn":
            return result(RunStatus.SUCCEEDED, text, usage)
        if answer.stop_reason == "cancelled":
            return result(RunStatus.CANCELLED, "the agent cancelled the turn", usage)
        kind = _FAILED_STOPS.get(answer.stop_reason, "agent_error")
        message = f"the agent stopped: {answer.stop_reason}"
        return ErrorData(kind, message), result(RunStatus.FAILED, message, usage)

    def _failure(
        self, run: _Run, talk: asyncio.Task[PromptResponse], result: Callable[..., AgentResult]
    ) -> tuple[ErrorData, AgentResult]:
        exc = talk.exception() if talk.done() and not talk.cancelled() else None
        if isinstance(exc, _Refused):
            return ErrorData(exc.kind, exc.message), result(RunStatus.FAILED, exc.message)
        if isinstance(exc, RequestError):
            message = _request_error_text(exc)
            return ErrorData("agent_error", message), result(RunStatus.FAILED, message)
        proc = run.proc
        code = proc.returncode if proc is not None else None
        message = f"{self._command[0]} ended the conversation (exit code {code})"
        tail = proc.stderr_tail(10) if proc is not None else ""
        if tail:
            message += f"; stderr: {tail}"
        if exc is not None and not isinstance(exc, ConnectionError | WorkspaceError):
            log.warning("agent.acp.unexpected", provider=self.name, error=repr(exc)[:500])
        return ErrorData("process_exited", message), result(RunStatus.FAILED, message)


def _usage(answer: PromptResponse) -> Usage:
    reported = answer.usage
    if reported is None:
        return Usage()
    return Usage(
        input_tokens=reported.input_tokens,
        output_tokens=reported.output_tokens,
        cache_read_tokens=reported.cached_read_tokens or 0,
        cache_write_tokens=reported.cached_write_tokens or 0,
    )


def _request_error_text(exc: RequestError) -> str:
    """The agent's own words for a failed request, bounded (agent output is untrusted)."""
    message = str(exc) or "request failed"
    data = exc.data
    if isinstance(data, dict):
        detail = data.get("message") or data.get("details")
        if isinstance(detail, str) and detail not in message:
            message = f"{message}: {detail}"
    elif isinstance(data, str) and data not in message:
        message = f"{message}: {data}"
    return message[:2000]
