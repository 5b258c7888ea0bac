"""One build's run: its events, its supervision, and the policy that decides its outcome.

- :class:`BuildEvents` stores the build's events (redacted, riding out a database blip)
  and times its steps;
- :class:`Supervisor` keeps the lease (a heartbeat, a proof before publishing) and watches
  for the task's cancel; either ends the agent and whatever waits on something long;
- :func:`execute_build` runs the pipeline (``build_steps``) under both and decides:
  an agent that ran and failed is an answer (the task fails, no retry); an accident of the
  infrastructure (git fetch, database, agent binary missing) goes back to the queue until
  ``max_attempts``; a lease lost to another worker ends the run silently (the task is that
  worker's now); otherwise :func:`finish` stores the :class:`BuildResult`, queues the
  callback, and sends the one final ``result`` event after the task's status is final, so a
  watcher that stops at ``result`` has seen everything and finds the task finished.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from forgeline.domain.agent import AgentEvent, AgentResult, ErrorData, RunStatus, StatusData
from forgeline.domain.build import AgentSummary, Artifacts, BuildResult
from forgeline.domain.callbacks import BUILD_COMPLETED, build_payload
from forgeline.domain.clock import Clock
from forgeline.domain.errors import (
    AgentUnavailableError,
    ForgelineError,
    GitError,
    LeaseLostError,
    PushRejectedError,
    StorageError,
    WorkspaceError,
)
from forgeline.domain.project import Project
from forgeline.domain.secrets import Secret
from forgeline.domain.task import Lease, TaskStatus
from forgeline.ports.ci import CIProvider
from forgeline.ports.git import Git
from forgeline.ports.queue import WorkQueue
from forgeline.ports.store import Store
from forgeline.ports.templates import TemplateProvider
from forgeline.services.builds import BuildRequest, finish_without_run
from forgeline.services.redaction import TextRedactor, redact_event
from forgeline.services.registry import ProviderRegistry

if TYPE_CHECKING:
    from forgeline.services.callbacks import CallbackDispatcher

    # The worker's own config: its builds read their settings from it.
    from forgeline.services.worker import WorkerConfig

log = structlog.get_logger("forgeline.worker")

#: The provider name on events the pipeline itself emits (steps, errors).
PIPELINE = "forgeline"

#: Waits before retrying an event append the database refused (then one last try).
EMIT_RETRY_DELAYS = (0.2, 1.0, 3.0)

T = TypeVar("T")


class Injects(Protocol):
    """What a build needs of the credential injector."""

    async def for_build(self, project: Project, task_id: str) -> dict[str, Secret]:
        """The environment variables a build of ``project`` receives."""
        ...

    async def secret(self, name: str, *, project: str | None, task_id: str | None) -> Secret:
        """One credential (e.g. the git push token)."""
        ...


class Observes(Protocol):
    """What a build reports to metrics."""

    def build_finished(
        self, status: str, duration_s: float, cost_usd: float, provider: str
    ) -> None:
        """Count a finished build."""
        ...

    def step_finished(self, step: str, outcome: str, duration_s: float) -> None:
        """Time one finished step of a build."""
        ...


@dataclass(frozen=True, slots=True)
class BuildParts:
    """The adapters and services a build runs on (the worker's, shared by its builds)."""

    settings: WorkerConfig
    queue: WorkQueue
    store: Store
    registry: ProviderRegistry
    git: Git
    redactor: TextRedactor
    clock: Clock
    injector: Injects | None = None
    callbacks: CallbackDispatcher | None = None
    ci: CIProvider | None = None
    templates: TemplateProvider | None = None
    metrics: Observes | None = None


class BuildCancelledError(Exception):
    """Raised inside a pipeline when its task's cancel was requested."""


class LeaseGoneError(Exception):
    """Raised inside a pipeline when another worker owns the task now."""


def retryable(exc: ForgelineError) -> bool:
    """Accidents of the infrastructure, worth another attempt (maybe on another worker):
    the database, the workspace, git talking to its remote, an agent binary missing here.
    Everything else is an answer: invalid input, something not found, a refused push, an
    agent that ran and failed, CI down through its client's own retries."""
    if isinstance(exc, PushRejectedError):
        return False
    return isinstance(exc, StorageError | WorkspaceError | GitError | AgentUnavailableError)


# --- events ------------------------------------------------------------------------------------


class BuildEvents:
    """The events of one build's task: stored redacted, steps timed."""

    def __init__(self, parts: BuildParts, task_id: str, logger: Any) -> None:
        self._parts = parts
        self._task_id = task_id
        self._log = logger

    async def emit(self, event: AgentEvent) -> None:
        """Store an event of this task, redacted; a short database blip is ridden out
        (bounded retries) rather than ending a long agent run."""
        redacted = redact_event(event, self._parts.redactor)
        for delay in EMIT_RETRY_DELAYS:
            try:
                await self._parts.store.append_event(self._task_id, redacted)
                return
            except StorageError as exc:
                self._log.warning("build.event_not_stored", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
        await self._parts.store.append_event(self._task_id, redacted)

    async def status(self, state: str, **detail: Any) -> None:
        """A pipeline ``status`` event."""
        await self.emit(AgentEvent(data=StatusData(state=state, detail=detail), provider=PIPELINE))

    async def error(self, kind: str, message: str) -> None:
        """A pipeline ``error`` event."""
        await self.emit(AgentEvent(data=ErrorData(kind=kind, message=message), provider=PIPELINE))

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """Record a step's start and end (with its duration and the ``outcome`` and detail
        the step put in the dict it is given)."""
        await self.status("step", step=name, phase="started")
        clock = self._parts.clock
        started = clock.monotonic()
        info: dict[str, Any] = {"outcome": "ok"}
        try:
            yield info
        except BaseException as exc:
            info["outcome"] = "cancelled" if isinstance(exc, BuildCancelledError) else "failed"
            raise
        finally:
            took = clock.monotonic() - started
            if self._parts.metrics is not None:
                self._parts.metrics.step_finished(name, str(info["outcome"]), took)
            with contextlib.suppress(ForgelineError):
                await asyncio.shield(
                    self.status(
                        "step", step=name, phase="finished", duration_ms=int(took * 1000), **info
                    )
                )


# --- supervision -------------------------------------------------------------------------------


class Supervisor:
    """Keeps one build's lease and watches for its cancel.

    ``stop`` is set on a cancel or a lost lease (whatever waits on something long stops);
    ``lease_gone`` when another worker may own the task now (nothing may be published).
    The agent run in progress (``agent_run``) is cancelled on either.
    """

    def __init__(self, parts: BuildParts, lease: Lease, logger: Any) -> None:
        self._parts = parts
        self._lease = lease
        self._log = logger
        self.cancel_requested = asyncio.Event()
        self.stop = asyncio.Event()
        self.lease_gone = asyncio.Event()
        #: The provider and run id of the agent run in progress.
        self.agent_run: tuple[str, str] | None = None

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """Heartbeat and cancel watch, for as long as the block runs."""
        task_id = self._lease.task_id
        watchers = [
            asyncio.create_task(self._heartbeat(), name=f"heartbeat:{task_id}"),
            asyncio.create_task(self._cancel_watch(), name=f"cancel-watch:{task_id}"),
        ]
        try:
            yield
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    def check(self) -> None:
        """Raise if the task's cancel was requested or its lease lost."""
        if self.lease_gone.is_set():
            raise LeaseGoneError
        if self.cancel_requested.is_set():
            raise BuildCancelledError

    async def prove_lease(self) -> None:
        """Renew the lease now, or end the run: only an attempt that still holds its lease
        (its fencing token is the task's current one) may commit or push."""
        try:
            await self._parts.queue.heartbeat(self._lease, lease_s=self._parts.settings.lease_s)
        except LeaseLostError:
            self._log.warning("build.lease_lost_before_publishing")
            await self._lose_lease()
        self.check()

    async def unless_lease_lost(self, work: Awaitable[T]) -> T:
        """``work``'s result, unless the lease is lost first: ``work`` is then stopped (a
        push killed mid-way) and the run ends."""
        task = asyncio.ensure_future(work)
        lost = asyncio.ensure_future(self.lease_gone.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(lost, return_exceptions=True)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task})
        if task.cancelled():
            raise LeaseGoneError
        return task.result()

    async def _heartbeat(self) -> None:
        lease_s = self._parts.settings.lease_s
        interval = max(0.2, lease_s / 3)
        clock = self._parts.clock
        renewed = clock.monotonic()
        while True:
            await clock.sleep(interval)
            try:
                task = await self._parts.queue.heartbeat(self._lease, lease_s=lease_s)
            except LeaseLostError:
                self._log.warning("build.lease_lost")
                await self._lose_lease()
                return
            except Exception as exc:  # noqa: BLE001 - a heartbeat must never die quietly
                self._log.warning("build.heartbeat_failed", error=str(exc))
                # Past the lease without a renewal, another worker may own the task: stop
                # now rather than run (and push) beside it.
                if clock.monotonic() - renewed >= lease_s - interval:
                    await self._lose_lease()
                    return
                continue
            renewed = clock.monotonic()
            if task.cancel_requested and not self.cancel_requested.is_set():
                await self._on_cancel()

    async def _cancel_watch(self) -> None:
        while not self.cancel_requested.is_set():
            try:
                if await self._parts.queue.wait_for_cancel(self._lease.task_id, 5.0):
                    await self._on_cancel()
                    return
            except Exception as exc:  # noqa: BLE001 - keep watching through outages
                self._log.warning("build.cancel_watch_failed", error=str(exc))
                await asyncio.sleep(1.0)

    async def _lose_lease(self) -> None:
        self.lease_gone.set()
        self.stop.set()
        await self._stop_agent()

    async def _on_cancel(self) -> None:
        self._log.info("build.cancel_requested")
        self.cancel_requested.set()
        self.stop.set()
        await self._stop_agent()

    async def _stop_agent(self) -> None:
        if self.agent_run is None:
            return
        provider, run_id = self.agent_run
        try:
            await self._parts.registry.get(provider).cancel(run_id)
        except Exception as exc:  # noqa: BLE001 - the port says cancel never raises; be sure
            self._log.error("build.agent_cancel_failed", error=str(exc))


# --- the run -----------------------------------------------------------------------------------


@dataclass
class BuildContext:
    """What the steps of one build share: its parts, task, checkout, events, supervisor,
    and what it produced so far (kept when a later step fails)."""

    parts: BuildParts
    lease: Lease
    request: BuildRequest
    workdir: str
    events: BuildEvents
    guard: Supervisor
    log: Any
    #: The agent provider of the build, once known (``forgeline`` before).
    provider: str = PIPELINE
    artifacts: Artifacts = field(default_factory=Artifacts)

    @property
    def task_id(self) -> str:
        """The build's task id."""
        return self.lease.task_id


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a pipeline ended (the artifacts are the context's)."""

    status: TaskStatus
    output: str
    agent: AgentResult | None = None
    error: str | None = None


#: The steps of a build, from the checkout to CI (``build_steps.pipeline``).
Pipeline = Callable[[BuildContext], Awaitable[Outcome]]


async def execute_build(parts: BuildParts, lease: Lease, workdir: str, pipeline: Pipeline) -> None:
    """Run ``pipeline`` for one claimed build in ``workdir`` under its supervisor, remove
    the checkout, and end the build as the failure policy says (see the module's
    docstring)."""
    request = BuildRequest.from_task(lease.task)
    logger = log.bind(task_id=lease.task_id, project=request.project)
    ctx = BuildContext(
        parts=parts,
        lease=lease,
        request=request,
        workdir=workdir,
        events=BuildEvents(parts, lease.task_id, logger),
        guard=Supervisor(parts, lease, logger),
        log=logger,
    )
    started = parts.clock.monotonic()
    logger.info("build.started", attempt=lease.task.attempts, workdir=workdir)
    outcome: Outcome | None = None
    try:
        async with ctx.guard.watching():
            try:
                if not parts.settings.sandboxed:
                    await ctx.events.status(
                        "warning",
                        message="the agent runs without a sandbox (FORGELINE_SANDBOX=none): it "
                        "can read and write whatever forgeline can",
                    )
                outcome = await pipeline(ctx)
            except LeaseGoneError:
                pass  # the task is another worker's now: nothing to finish here
            except BuildCancelledError:
                outcome = Outcome(TaskStatus.CANCELLED, "build cancelled")
            except ForgelineError as exc:
                if not (retryable(exc) and await _retry(ctx, exc.message)):
                    outcome = Outcome(TaskStatus.FAILED, exc.message, error=exc.message)
            except Exception as exc:
                # A bug, not an answer: fail the task with a generic reason (details in the
                # log) instead of leaving it running until its lease expires.
                logger.exception("build.unexpected_error")
                message = f"internal error ({type(exc).__name__}); see the worker's log"
                outcome = Outcome(TaskStatus.FAILED, message, error=message)
    finally:
        # Before the task is final: whoever sees it final (a watcher, the next build)
        # finds nothing of this attempt left on disk.
        await asyncio.shield(_remove_checkout(ctx))
    if outcome is None or ctx.guard.lease_gone.is_set():
        return
    await finish(ctx, outcome, started)


async def _remove_checkout(ctx: BuildContext) -> None:
    try:
        await ctx.parts.git.remove_checkout(ctx.workdir)
    except ForgelineError as exc:
        # The sweep of a later worker removes it (it is not leased any more).
        ctx.log.warning("build.checkout_not_removed", error=exc.message)


async def _retry(ctx: BuildContext, message: str) -> bool:
    """Give an infrastructure failure back to the queue; True if it will run again."""
    task = ctx.lease.task
    if task.attempts >= task.max_attempts:
        return False
    with contextlib.suppress(ForgelineError):
        await ctx.events.error("infrastructure", message)
        await ctx.events.status("retrying", attempt=task.attempts, max_attempts=task.max_attempts)
    parts = ctx.parts
    try:
        task = await parts.queue.fail(ctx.lease, parts.redactor.redact(message), retryable=True)
    except LeaseLostError:
        return True
    if task.status is not TaskStatus.QUEUED:
        # The queue made it final (cancel requested meanwhile): finish it properly.
        await finish_without_run(
            task, store=parts.store, callbacks=parts.callbacks, provider=ctx.provider
        )
        return True
    ctx.log.warning("build.retrying", error=message)
    return True


async def finish(ctx: BuildContext, outcome: Outcome, started: float) -> None:
    """Store the build's result and make its task final; queue the callback before, send
    the final ``result`` event after (``started``: the clock's time at the build's start)."""
    parts = ctx.parts
    redact = parts.redactor
    output = redact.redact(outcome.output or "")
    result = BuildResult(
        output=output,
        artifacts=ctx.artifacts,
        agent=AgentSummary(ctx.provider, outcome.agent) if outcome.agent is not None else None,
        error=redact.redact(outcome.error) if outcome.error else None,
    )
    if outcome.error:
        await ctx.events.error("build_" + outcome.status.value, outcome.error)
    # The callback goes into the durable outbox before the task is final: if this worker
    # dies in between, the task runs again and its enqueue (same idempotency key) returns
    # this delivery, so the requester hears exactly once either way.
    await _callback(ctx, outcome.status, output)
    session = outcome.agent.session_id if outcome.agent is not None else None
    if outcome.status is TaskStatus.COMPLETED and session:
        # Before the task is final: the project's next build may start the moment it is,
        # and one that continues must find this session.
        await parts.store.record_session(ctx.request.project, ctx.provider, session, ctx.task_id)
    stored = result.to_json()
    try:
        if outcome.status is TaskStatus.COMPLETED:
            await parts.queue.complete(ctx.lease, stored)
        elif outcome.status is TaskStatus.CANCELLED:
            await parts.queue.finish_cancelled(ctx.lease, stored)
        else:
            await parts.queue.fail(
                ctx.lease, result.error or output, retryable=False, result=stored
            )
    except LeaseLostError:
        ctx.log.warning("build.lease_lost_at_finish")
        return
    agent = outcome.agent or AgentResult(status=RunStatus.FAILED)
    final = replace(
        agent,
        status=_run_status(outcome.status, agent),
        text=output,
        duration_ms=int((parts.clock.monotonic() - started) * 1000),
    )
    await ctx.events.emit(
        AgentEvent(data=final, provider=ctx.provider, session_id=final.session_id)
    )
    if parts.metrics is not None:
        took_s = parts.clock.monotonic() - started
        parts.metrics.build_finished(outcome.status.value, took_s, agent.cost_usd, ctx.provider)
    ctx.log.info("build.finished", status=outcome.status.value, **ctx.artifacts.to_json())


async def _callback(ctx: BuildContext, status: TaskStatus, output: str) -> None:
    url = ctx.request.spec.callback_url
    callbacks = ctx.parts.callbacks
    if not url or callbacks is None:
        return
    payload = build_payload(
        task_id=ctx.task_id,
        project_id=ctx.request.project,
        status=status.value,
        output=output,
        artifacts=ctx.artifacts,
    )
    # No except: a callback that cannot be queued must not be lost behind a final status.
    # The task stays running, its lease expires, and the next attempt (which finds the
    # pushed commit) queues it.
    await callbacks.enqueue(
        ctx.task_id,
        url,
        BUILD_COMPLETED,
        ctx.parts.redactor.redact_obj(payload),
        idempotency_key=f"{ctx.task_id}:{BUILD_COMPLETED}",
    )


def _run_status(status: TaskStatus, agent: AgentResult) -> RunStatus:
    if status is TaskStatus.COMPLETED:
        return RunStatus.SUCCEEDED
    if status is TaskStatus.CANCELLED:
        return RunStatus.CANCELLED
    return RunStatus.TIMED_OUT if agent.status is RunStatus.TIMED_OUT else RunStatus.FAILED
