"""OpenCodeAgent: the CodeAgent port over ``opencode serve`` (HTTP and SSE).

One run, as the real server needs it (``shared/reference/opencode-serve.md``):

1. get the run's server (:mod:`.server`): by default an ``opencode serve`` of its own, in a
   sandbox that may write only the run's checkout and the project's opencode state, with
   the build's credentials in its environment; or the configured shared one;
2. create a session with a title for the run's directory, or reuse ``resume_session``;
3. subscribe to the directory's event stream and wait for ``server.connected`` *before*
   sending, so nothing of the run can be missed;
4. send the prompt with ``prompt_async`` (204) and map the session's events
   (:mod:`.mapping`) until the loop ends;
5. the loop ends at the first ``session.idle`` after the prompt, confirmed by the newest
   assistant message having ``time.completed`` (on errors and aborts the idle comes before
   that message is final, pitfall P4, so it is awaited, polling the stored messages if the
   stream stays quiet); later idles are ignored.

Cancelling (:meth:`OpenCodeAgent.cancel`, the consumer closing the iterator, a timeout, a
limit) aborts the session until ``GET /session/status`` shows it idle *and* the run's newest
message is a completed assistant message: the abort's answer proves nothing (P3), and an
abort sent between ``prompt_async``'s 204 and the session turning busy is silently lost,
so it is repeated until the stored state shows the end. opencode has then closed the
provider stream and killed the bash tool's processes. A session is never deleted (P5).

What a shared server (``FORGELINE_OPENCODE_URL``) cannot do per run: ``AgentRequest.env`` is
not applied (provider keys come from that server's own environment or configuration).
``max_turns`` and ``max_cost_usd``, which opencode lacks, are enforced here by aborting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import structlog

from forgeline.adapters.agents.opencode.client import OpenCodeClient
from forgeline.adapters.agents.opencode.events import (
    MalformedEvent,
    OpenCodeEvent,
    PartDelta,
    PermissionAsked,
    SessionIdle,
    SessionStatus,
)
from forgeline.adapters.agents.opencode.mapping import RunTranslator
from forgeline.adapters.agents.opencode.server import (
    OpenCodeServer,
    RemoteServer,
    ServerPerRun,
    ServerSource,
    SharedServer,
    read_config_content,
)
from forgeline.adapters.agents.opencode.stream import Resync, SessionStream, StreamFailed
from forgeline.domain.agent import (
    AgentCapabilities,
    AgentEvent,
    AgentProvider,
    AgentRequest,
    AgentResult,
    CostSource,
    ErrorData,
    EventData,
    InitData,
    RunStatus,
    StatusData,
)
from forgeline.domain.errors import ExternalServiceError, ForgelineError
from forgeline.domain.secrets import Secret
from forgeline.ports.workspace import Workspace

if TYPE_CHECKING:
    from forgeline.settings import Settings

T = TypeVar("T")

log = structlog.get_logger(__name__)

#: The port's bound on :meth:`OpenCodeAgent.cancel` (and on the abort at the end of a run).
CANCEL_TIMEOUT_S = 5.0

#: After the first idle, how long to wait for the newest assistant message to be final
#: (P4: on errors it follows the idle; it took well under a second when observed).
CONFIRM_TIMEOUT_S = 10.0

#: In that phase, how long the stream may stay quiet before the stored messages are read.
CONFIRM_POLL_S = 0.25

#: How often the session status is polled while waiting for an abort to take effect.
ABORT_POLL_S = 0.1

#: Remembered run ids (cancelled before they started, or recently finished), bounded.
_REMEMBERED_RUNS = 1024


@dataclass(eq=False)
class _Run:
    """The state of one run that :meth:`OpenCodeAgent.cancel` may touch from another task."""

    request: AgentRequest
    directory: str
    translator: RunTranslator
    server: OpenCodeServer | None = None
    client: OpenCodeClient | None = None
    session_id: str | None = None
    prompt_started: bool = False
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)
    prompt_posted: asyncio.Event = field(default_factory=asyncio.Event)
    abort_task: asyncio.Task[None] | None = None
    idle_at_resync: bool = False


class _RunEnded(Exception):  # noqa: N818 - control flow inside a run, not an error
    """Raised inside a run's loop to end it with a status (and an optional error event)."""

    def __init__(self, status: RunStatus, error: ErrorData | None = None) -> None:
        super().__init__(status.value)
        self.status = status
        self.error = error


class OpenCodeAgent:
    """Drives ``opencode serve``: one session per run, on the server its source gives it.

    Build it with :meth:`from_settings` (the composition root does) or hand it a server
    source (tests share one server across adapters). The adapter owns its servers:
    :meth:`aclose` ends them.
    """

    def __init__(
        self,
        *,
        servers: ServerSource,
        idle_timeout_s: float = 600.0,
        config_content: str | None = None,
    ) -> None:
        self._servers = servers
        self._idle_timeout_s = idle_timeout_s
        self._models = _models_of(config_content)
        self._runs: dict[str, _Run] = {}
        self._early_cancels: OrderedDict[str, None] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()

    @classmethod
    def from_settings(
        cls, settings: Settings, workspace: Workspace, *, password: Secret | None = None
    ) -> OpenCodeAgent:
        """The adapter for these settings.

        With ``opencode_url`` set it connects there, authenticating with ``password`` (the
        lead wires it from the credential store); otherwise each run starts a server of its
        own through ``workspace`` (the sandbox), with its state under
        ``<data_dir>/agents/opencode/<project>``.
        """
        config = read_config_content(settings.opencode_config)
        servers: ServerSource
        if settings.opencode_url:
            servers = SharedServer(RemoteServer(settings.opencode_url, password))
        else:
            servers = ServerPerRun(
                binary=settings.opencode_bin,
                workspace=workspace,
                state_root=settings.data_dir / "agents" / "opencode",
                config_content=config,
            )
        return cls(
            servers=servers,
            idle_timeout_s=settings.agent_idle_timeout_s,
            config_content=config,
        )

    @property
    def name(self) -> str:
        """``opencode``."""
        return AgentProvider.OPENCODE.value

    # --- the port ------------------------------------------------------------------------

    async def execute(self, request: AgentRequest) -> AsyncGenerator[AgentEvent, None]:
        """Run the prompt; yields normalized events and exactly one ``result`` at the end."""
        request.validate()
        run = _Run(request, _absolute(request.workdir), RunTranslator())
        self._runs[request.run_id] = run
        if self._early_cancels.pop(request.run_id, False) is None:
            run.cancel_requested.set()
        started = time.monotonic()
        result: AgentResult | None = None
        try:
            async with contextlib.aclosing(self._drive(run, started)) as steps:
                async for data in steps:
                    if isinstance(data, AgentResult):
                        result = data
                    yield self._event(run, data)
        finally:
            # Reached normally, on aclose() (GeneratorExit) or on the consumer's
            # cancellation: a run that did not end by itself is aborted, bounded.
            try:
                if result is None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(CANCEL_TIMEOUT_S):
                            await self._abort_and_settle(run)
                if run.abort_task is not None and not run.abort_task.done():
                    run.abort_task.cancel()
            finally:
                self._runs.pop(request.run_id, None)
                _remember(self._finished, request.run_id)
                if run.server is not None:
                    await self._servers.release(run.server)

    async def cancel(self, run_id: str) -> None:
        """Abort the run and return once its session is idle (bounded); never raises."""
        run = self._runs.get(run_id)
        if run is None:
            if run_id not in self._finished:
                # Before execute(): the run will end at once as cancelled.
                _remember(self._early_cancels, run_id)
            return
        run.cancel_requested.set()
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_S):
                await self._abort_and_settle(run)
        except TimeoutError:
            log.warning("opencode.cancel_unconfirmed", run_id=run_id, session=run.session_id)

    async def capabilities(self) -> AgentCapabilities:
        """A running (or configured) server is asked for its health; else the binary
        answers ``--version`` (the server starts with the first run, not for a probe)."""
        check = await self._servers.check()
        return AgentCapabilities(
            provider=self.name,
            available=check.available,
            version=check.version,
            detail=check.detail,
            resume=True,
            streaming=True,
            permission_modes=(),
            models=self._models,
        )

    async def aclose(self) -> None:
        """Abort what still runs, then stop the servers (everything they started)."""
        for run_id in list(self._runs):
            await self.cancel(run_id)
        await self._servers.aclose()

    # --- one run ---------------------------------------------------------------------------

    def _event(self, run: _Run, data: EventData) -> AgentEvent:
        return AgentEvent(data=data, provider=self.name, session_id=run.session_id)

    async def _drive(self, run: _Run, started: float) -> AsyncGenerator[EventData, None]:
        """The run's events, ending with its result; never raises for a failed run."""
        request = run.request
        deadline = started + request.timeout_s
        status: RunStatus
        ended_by_itself = False
        error: ErrorData | None = None
        stream: SessionStream | None = None
        try:
            try:
                client, session_id = await self._prepare(run, deadline)
                yield InitData(model=request.model, cwd=run.directory, tools=())
                stream = SessionStream(
                    client,
                    run.directory,
                    session_id,
                    name=f"opencode-events-{request.run_id}",
                )
                await _bounded(stream.open(), deadline)
                await self._send_prompt(run, client, session_id, deadline)
                async with contextlib.aclosing(
                    self._follow(run, client, stream, deadline)
                ) as follow:
                    async for data in follow:
                        yield data
                status = run.translator.outcome().status
                ended_by_itself = True
            except _RunEnded as ended:
                status, error = ended.status, ended.error
            except ForgelineError as exc:
                status, error = RunStatus.FAILED, ErrorData(exc.code, exc.message)
            except Exception as exc:  # the port promises a result whatever fails
                log.exception("opencode.run_crashed", run_id=request.run_id)
                status, error = RunStatus.FAILED, ErrorData("internal", type(exc).__name__)
            if run.prompt_started and not ended_by_itself:
                # Cancelled, timed out, or we lost track of it (stream gone, a failed call):
                # stop the agent before reading the final state, so it is final and nothing
                # keeps running unobserved.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CANCEL_TIMEOUT_S):
                        await self._abort_and_settle(run)
                for data in await self._resync(run, with_status=False, quiet=True):
                    yield data
            if error is not None:
                yield error
            for data in run.translator.flush():
                yield data
        finally:
            if stream is not None:
                await stream.aclose()
        outcome = run.translator.outcome()
        yield AgentResult(
            status=status,
            text=outcome.text,
            session_id=run.session_id,
            num_turns=outcome.num_turns,
            duration_ms=int((time.monotonic() - started) * 1000),
            cost_usd=outcome.cost_usd,
            usage=outcome.usage,
            # opencode prices each message from its own model list: its figure, not ours.
            cost_source=CostSource.REPORTED,
        )

    async def _prepare(self, run: _Run, deadline: float) -> tuple[OpenCodeClient, str]:
        """The server's client and the run's session (created, or resumed)."""
        if not _is_dir(run.directory):
            raise _RunEnded(
                RunStatus.FAILED, ErrorData("workdir", f"{run.directory} is not a directory")
            )
        if run.request.env and isinstance(self._servers, SharedServer):
            # Names only: the values are the build's credentials.
            log.warning("opencode.request_env_not_applied", names=sorted(run.request.env))
        self._check_cancel(run)
        run.server = await self._servers.acquire(run.request)
        run.client = client = await _bounded(run.server.client(), deadline)
        self._check_cancel(run)
        session_id, known = await _bounded(self._session(run, client), deadline)
        run.session_id = session_id
        run.translator = RunTranslator(known_messages=known)
        return client, session_id

    async def _send_prompt(
        self, run: _Run, client: OpenCodeClient, session_id: str, deadline: float
    ) -> None:
        """``prompt_async``, unless cancelled first; marks the points ``cancel`` relies on."""
        # No await between the check and the flag: a cancel either sees the flag (and
        # aborts) or set cancel_requested before it (and nothing is sent).
        self._check_cancel(run)
        run.prompt_started = True
        try:
            await _bounded(
                client.prompt_async(
                    session_id, run.directory, run.request.prompt, run.request.model
                ),
                deadline,
            )
        finally:
            run.prompt_posted.set()

    async def _session(self, run: _Run, client: OpenCodeClient) -> tuple[str, list[str]]:
        """The run's session id and the ids of messages it held before this prompt."""
        request = run.request
        if request.resume_session:
            try:
                session_id = await client.get_session(request.resume_session, run.directory)
            except ExternalServiceError as exc:
                if exc.status_code in (404, 500):  # 500: a malformed id (P2)
                    raise _RunEnded(
                        RunStatus.FAILED,
                        ErrorData("session_not_found", f"no session {request.resume_session!r}"),
                    ) from exc
                raise
            messages = await client.messages(session_id, run.directory)
            return session_id, [m.info.id for m in messages]
        title = f"forgeline {request.task_id or request.run_id}"[:100]
        return await client.create_session(run.directory, title), []

    async def _follow(  # noqa: PLR0912, PLR0915 - one state machine reads best in one place
        self, run: _Run, client: OpenCodeClient, stream: SessionStream, deadline: float
    ) -> AsyncGenerator[EventData, None]:
        """Map the stream until the loop ended and its last message is final."""
        translator = run.translator
        idle_timeout = run.request.idle_timeout_s or self._idle_timeout_s
        last_activity = time.monotonic()
        idle_since: float | None = None
        cancel_wait = asyncio.create_task(
            run.cancel_requested.wait(), name=f"opencode-cancel-{run.request.run_id}"
        )
        try:
            while True:
                now = time.monotonic()
                if idle_since is not None:
                    if translator.settled() or now - idle_since > CONFIRM_TIMEOUT_S:
                        return
                    wait = CONFIRM_POLL_S
                else:
                    wait = min(deadline - now, last_activity + idle_timeout - now)
                if now >= deadline:
                    raise _RunEnded(
                        RunStatus.TIMED_OUT,
                        ErrorData("timeout", f"no result within {run.request.timeout_s:g} s"),
                    )
                item = await self._next(stream, cancel_wait, max(wait, 0.0))
                if run.cancel_requested.is_set():
                    raise _RunEnded(RunStatus.CANCELLED)
                if item is None:
                    if idle_since is not None:
                        # Quiet after idle: read the stored state (P4) and check again.
                        for data in await self._resync(run, with_status=False):
                            yield data
                        if translator.last_assistant is None and translator.errors:
                            return  # failed before any answer (e.g. unknown model)
                        continue
                    if time.monotonic() - last_activity >= idle_timeout:
                        raise _RunEnded(
                            RunStatus.TIMED_OUT,
                            ErrorData("idle_timeout", f"no event for {idle_timeout:g} s"),
                        )
                    continue
                last_activity = time.monotonic()
                match item:
                    case Resync():
                        for data in await self._resync(run, with_status=True):
                            yield data
                        if self._idle_after_resync(run):
                            idle_since = idle_since or time.monotonic()
                    case StreamFailed(error=exc):
                        raise _RunEnded(RunStatus.FAILED, ErrorData(exc.code, exc.message))
                    case SessionIdle():
                        idle_since = idle_since or time.monotonic()
                    case SessionStatus(state="busy" | "retry"):
                        # Working again: an earlier idle was not this run's end (a late idle
                        # pair of a previous, aborted run of a resumed session).
                        idle_since = None
                        for data in translator.on_event(item):
                            yield data
                    case PermissionAsked(request_id=request_id, permission=permission):
                        # Unattended runs: the rules that asked are the operator's; an ask
                        # would block forever, so it is granted once, visibly.
                        await client.reply_permission(request_id, run.directory, "once")
                        yield StatusData(
                            state="permission_granted", detail={"permission": permission}
                        )
                    case MalformedEvent(reason=reason):
                        yield ErrorData("protocol", f"unreadable event from opencode: {reason}")
                    case PartDelta():
                        pass  # text is emitted whole, once final
                    case _:
                        for data in translator.on_event(item):
                            yield data
                        if (limit := _limit_reached(run.request, translator)) is not None:
                            raise _RunEnded(RunStatus.FAILED, ErrorData("limit", limit))
        finally:
            cancel_wait.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cancel_wait

    @staticmethod
    async def _next(
        stream: SessionStream, cancel_wait: asyncio.Task[bool], wait_s: float
    ) -> OpenCodeEvent | Resync | StreamFailed | None:
        """The next stream item, or None after ``wait_s`` or when a cancel arrives."""
        if cancel_wait.done():
            return None
        getter = asyncio.create_task(stream.get(), name="opencode-next-event")
        try:
            await asyncio.wait({getter, cancel_wait}, timeout=wait_s, return_when="FIRST_COMPLETED")
        finally:
            if not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None

    async def _resync(
        self, run: _Run, *, with_status: bool, quiet: bool = False
    ) -> list[EventData]:
        """Re-read the stored state; the translator drops what was emitted already.

        The status is read before the messages: if it says idle, the messages read after
        it are final.
        """
        if run.client is None or run.session_id is None:
            return []
        out: list[EventData] = []
        try:
            if with_status:
                states = await run.client.session_status(run.directory)
                run.idle_at_resync = run.session_id not in states
                out += run.translator.on_status(states.get(run.session_id))
            out += run.translator.on_messages(
                await run.client.messages(run.session_id, run.directory)
            )
        except ExternalServiceError as exc:
            if not quiet:
                raise
            log.warning("opencode.resync_failed", session=run.session_id, error=exc.message)
        return out

    @staticmethod
    def _idle_after_resync(run: _Run) -> bool:
        """After a reconnect: did the loop end while the stream was down?

        Idle in ``GET /session/status`` counts only with evidence that the prompt ran (an
        answer or an error of this run): right after ``prompt_async`` the session may not
        be busy yet (P3: idle proves nothing by itself).
        """
        if not run.idle_at_resync:
            return False
        return run.translator.last_assistant is not None or bool(run.translator.errors)

    def _check_cancel(self, run: _Run) -> None:
        if run.cancel_requested.is_set():
            raise _RunEnded(RunStatus.CANCELLED)

    # --- abort -----------------------------------------------------------------------------

    async def _abort_and_settle(self, run: _Run) -> None:
        """Abort the run's session and wait until it is idle; shared by all who ask."""
        if not run.prompt_started:
            return  # nothing was sent: the run sees the cancel flag before sending
        if run.abort_task is None or run.abort_task.done():
            run.abort_task = asyncio.create_task(
                self._abort_loop(run), name=f"opencode-abort-{run.request.run_id}"
            )
        await asyncio.shield(run.abort_task)

    async def _abort_loop(self, run: _Run) -> None:
        """Abort until the run has visibly ended; the caller bounds the time.

        ``prompt_async`` answers 204 *before* the session turns busy (observed: the status
        right after it is often still idle), and an abort in that gap is a no-op that
        still answers ``true``. So an idle status alone does not prove the run is over:
        it is over when the newest message of this run is an assistant message with
        ``time.completed`` (finished or aborted), or the run already reported an error.
        Until then the abort is repeated.
        """
        # An abort before the prompt is even stored cannot work: wait for the 204 first.
        await run.prompt_posted.wait()
        client, session_id = run.client, run.session_id
        if client is None or session_id is None:
            return
        run.translator.abort_expected = True
        while True:
            if run.server is None or run.server.running_client() is None:
                return  # the run's server died: nothing of the run is left to stop
            try:
                await client.abort(session_id, run.directory)
                if session_id not in await client.session_status(
                    run.directory
                ) and await self._run_is_over(run, client, session_id):
                    return
            except ExternalServiceError as exc:
                log.warning("opencode.abort_failed", session=session_id, error=exc.message)
            await asyncio.sleep(ABORT_POLL_S)

    @staticmethod
    async def _run_is_over(run: _Run, client: OpenCodeClient, session_id: str) -> bool:
        """The stored state shows this run ended (see ``_abort_loop``)."""
        if run.translator.errors:
            return True
        messages = await client.messages(session_id, run.directory)
        ours = [m for m in messages if run.translator.is_new(m.info.id)]
        return bool(ours) and ours[-1].info.role == "assistant" and ours[-1].info.completed


async def _bounded(awaitable: Awaitable[T], deadline: float) -> T:
    """Await within the run's wall-clock deadline; past it the run ends ``timed_out``."""
    try:
        async with asyncio.timeout_at(_loop_time(deadline)):
            return await awaitable
    except TimeoutError as exc:
        raise _RunEnded(
            RunStatus.TIMED_OUT, ErrorData("timeout", "the run's time ran out")
        ) from exc


def _loop_time(monotonic_deadline: float) -> float:
    """``time.monotonic`` deadline → the running loop's clock (they may differ)."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())


def _limit_reached(request: AgentRequest, translator: RunTranslator) -> str | None:
    """Why the run must stop now (``max_turns``, ``max_cost_usd``), if it must.

    opencode has no such limits of its own, so they are enforced here as the step parts
    arrive (a model call beyond ``max_turns`` is stopped as it starts); the run is then
    aborted like a cancelled one and ends failed.
    """
    if request.max_turns is not None and translator.steps_started > request.max_turns:
        return f"max_turns ({request.max_turns}) reached"
    if request.max_cost_usd is not None and translator.cost_usd > request.max_cost_usd:
        return f"max_cost_usd ({request.max_cost_usd:g}) exceeded"
    return None


def _absolute(workdir: str) -> str:
    """The run's directory as an absolute path (opencode keys instances by it)."""
    return os.path.abspath(workdir)  # noqa: PTH100 - a str is what the API wants


def _is_dir(path: str) -> bool:
    return Path(path).is_dir()


def _remember(store: OrderedDict[str, None], key: str) -> None:
    store[key] = None
    store.move_to_end(key)
    while len(store) > _REMEMBERED_RUNS:
        store.popitem(last=False)


def _models_of(config_content: str | None) -> tuple[str, ...]:
    """``provider/model`` names declared in the opencode configuration, if any."""
    if not config_content:
        return ()
    try:
        config = json.loads(config_content)
    except ValueError:
        return ()
    providers = config.get("provider") if isinstance(config, dict) else None
    if not isinstance(providers, dict):
        return ()
    return tuple(
        f"{provider}/{model}"
        for provider, spec in providers.items()
        if isinstance(spec, dict) and isinstance(spec.get("models"), dict)
        for model in spec["models"]
    )
