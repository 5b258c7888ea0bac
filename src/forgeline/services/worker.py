"""The Worker: claims build tasks and runs each as one pipeline of steps.

One build = ``checkout → agent → commit → push → ci → finish → callback``; every step's
start and end is a ``status`` event in the task's stream. The agent's own events are
stored as they happen (redacted); its ``result`` is held back and becomes the task's one
final ``result`` event, sent after the task's status is final, so a watcher that stops at
``result`` has seen everything and finds the task finished.

Failure policy: an agent that ran and failed is an answer (the task fails, no retry); an
accident of the infrastructure (git fetch, database, agent binary missing) is retried by
the queue with backoff until ``max_attempts``. A lease lost to another worker stops the
run silently: the task is that worker's now.

Every attempt works in a directory of its own, ``<checkouts>/<project>/<task id>.<lease
token>``, removed when the attempt ends; what a killed worker left behind is removed by the
next worker that sees it (at start and every few seconds), once the queue shows that no
running attempt holds that lease. An attempt proves it still holds its lease right before
it commits and before it pushes, and a push is stopped if the lease is lost meanwhile: an
attempt that lost its lease never publishes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from forgeline.domain.agent import (
    AgentEvent,
    AgentRequest,
    AgentResult,
    ErrorData,
    RunStatus,
    StatusData,
)
from forgeline.domain.callbacks import BUILD_COMPLETED, build_payload
from forgeline.domain.errors import (
    AgentUnavailableError,
    ForgelineError,
    GitError,
    LeaseLostError,
    PushRejectedError,
    StorageError,
    TaskNotFoundError,
    WorkspaceError,
)
from forgeline.domain.git import GitAuthor, GitRemote, build_commit_message, review_branch
from forgeline.domain.project import Project
from forgeline.domain.secrets import Secret
from forgeline.domain.task import BuildSpec, Lease, TaskStatus
from forgeline.ports.agent import CodeAgent
from forgeline.ports.ci import CIProvider, PipelineStatus
from forgeline.ports.git import Git
from forgeline.ports.queue import WorkQueue
from forgeline.ports.store import Store
from forgeline.ports.templates import TemplateProvider
from forgeline.ports.workspace import Workspace
from forgeline.services.builds import BUILD_KIND, BuildRequest, Calls, finish_without_run
from forgeline.services.credentials import reveal_env
from forgeline.services.redaction import TextRedactor, redact_event
from forgeline.services.registry import ProviderRegistry

log = structlog.get_logger("forgeline.worker")

#: The provider name on events the pipeline itself emits (steps, errors).
PIPELINE = "forgeline"

T = TypeVar("T")

#: An attempt directory's name: ``<task id>.<lease token>``.
_ATTEMPT_NAME = re.compile(r"(?P<task>[A-Za-z0-9_-]{1,64})\.(?P<token>[0-9]{1,19})")


def attempt_dir(checkouts_dir: Path, project: str, lease: Lease) -> str:
    """Where one attempt of a build works: never used by another attempt or task."""
    return str(checkouts_dir / project / f"{lease.task_id}.{lease.token}")


class Injects(Protocol):
    """What the worker needs of the credential injector."""

    async def for_build(self, project: Project, task_id: str) -> dict[str, Secret]:
        """The environment variables a build of ``project`` receives."""
        ...

    async def secret(self, name: str, *, project: str | None, task_id: str | None) -> Secret:
        """One credential (e.g. the git push token)."""
        ...


class Observes(Protocol):
    """What the worker reports to metrics."""

    def build_finished(
        self, status: str, duration_s: float, cost_usd: float, provider: str
    ) -> None:
        """Count a finished build."""
        ...

    def step_finished(self, step: str, outcome: str, duration_s: float) -> None:
        """Time one finished step of a build."""
        ...


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How a worker runs builds."""

    name: str
    checkouts_dir: Path
    author: GitAuthor
    concurrency: int = 2
    lease_s: float = 30.0
    shutdown_grace_s: float = 30.0
    git_token_credential: str = "git-token"  # noqa: S105 - a credential name
    ci_find_timeout_s: float = 120.0
    ci_pipeline_timeout_s: float = 1800.0
    #: How long an idle worker waits for a wake-up before it claims again anyway.
    idle_wait_s: float = 1.0
    #: False when agents run without a sandbox (``FORGELINE_SANDBOX=none``): every build
    #: then says so in its events.
    sandboxed: bool = True


#: Waits before retrying an event append the database refused (then one last try).
_EMIT_RETRY_DELAYS = (0.2, 1.0, 3.0)


def _retryable(exc: ForgelineError) -> bool:
    """Accidents of the infrastructure, worth another attempt (maybe on another worker):
    the database, the workspace, git talking to its remote, an agent binary missing here.
    Everything else is an answer: invalid input, something not found, a refused push, an
    agent that ran and failed, CI down through its client's own retries."""
    if isinstance(exc, PushRejectedError):
        return False
    return isinstance(exc, StorageError | WorkspaceError | GitError | AgentUnavailableError)


class BuildCancelledError(Exception):
    """Raised inside a pipeline when its task's cancel was requested."""


class _LeaseGoneError(Exception):
    """Raised inside a pipeline when another worker owns the task now."""


@dataclass
class _Outcome:
    """Where a pipeline ended."""

    status: TaskStatus
    output: str
    artifacts: dict[str, Any] = field(default_factory=dict)
    agent: AgentResult | None = None
    error: str | None = None


class Worker:
    """Claims build tasks from the queue and runs them, up to ``concurrency`` at once."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        queue: WorkQueue,
        store: Store,
        registry: ProviderRegistry,
        git: Git,
        workspace: Workspace,
        redactor: TextRedactor,
        injector: Injects | None = None,
        callbacks: Calls | None = None,
        ci: CIProvider | None = None,
        templates: TemplateProvider | None = None,
        metrics: Observes | None = None,
    ) -> None:
        self.config = config
        self._queue = queue
        self._store = store
        self._registry = registry
        self._git = git
        self._workspace = workspace
        self._redactor = redactor
        self._injector = injector
        self._callbacks = callbacks
        self._ci = ci
        self._templates = templates
        self._metrics = metrics
        self._running: dict[str, asyncio.Task[None]] = {}
        #: Attempt directories of this worker's builds, kept by the sweep whatever the queue says.
        self._attempt_dirs: set[str] = set()
        self._wake = asyncio.Event()

    @property
    def running(self) -> list[str]:
        """Ids of the builds this worker runs now."""
        return list(self._running)

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run builds until ``stop`` is set, then shut down gracefully:
        running builds get ``shutdown_grace_s`` to finish, then are cancelled and their
        tasks given back to the queue for another worker."""
        log.info("worker.started", worker=self.config.name, concurrency=self.config.concurrency)
        if not self.config.sandboxed:
            log.warning("worker.unsandboxed", hint="FORGELINE_SANDBOX=none: agents run unconfined")
        last_recovery = 0.0
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                try:
                    if time.monotonic() - last_recovery > self.config.lease_s / 2:
                        last_recovery = time.monotonic()
                        await self._recover()
                    if await self._claim():
                        continue
                except Exception as exc:  # noqa: BLE001 - the loop must outlive any one error
                    # The database went away (restart, network) or a bug hit one claim:
                    # keep the builds that run and try again shortly; leases of running
                    # builds are renewed by their own heartbeats.
                    log.warning("worker.loop_error", error=str(exc), kind=type(exc).__name__)
                    await asyncio.wait({stopper}, timeout=1.0)
                    continue
                await self._idle(stopper)
        finally:
            stopper.cancel()
            await self._shutdown()
        log.info("worker.stopped", worker=self.config.name)

    async def _claim(self) -> bool:
        free = self.config.concurrency - len(self._running)
        if free <= 0:
            return False
        leases = await self._queue.claim(
            self.config.name, lease_s=self.config.lease_s, limit=free, kinds=[BUILD_KIND]
        )
        for lease in leases:
            if lease.task_id in self._running:
                # Our own earlier run of this task lost its lease and is still winding
                # down: never run a task twice side by side in one checkout.
                await self._queue.release(lease)
                continue
            self._start(lease)
        return bool(leases)

    async def _recover(self) -> None:
        recovered = await self._queue.recover_expired()
        if recovered:
            log.info("worker.recovered_expired", count=recovered)
        # After the recovery: an attempt whose lease just ran out is not running any more.
        await self.sweep_attempts()
        # Tasks the queue itself made final (given up after too many lost leases, or
        # cancelled as their worker stopped) still owe their requester a result and a
        # callback; finishing is idempotent, so any worker may do it.
        for status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            for task in await self._queue.list(status=status, kind=BUILD_KIND, limit=20):
                if task.result is None:
                    await finish_without_run(
                        task,
                        store=self._store,
                        callbacks=self._callbacks,
                        provider=self._registry.default_name or PIPELINE,
                    )

    async def sweep_attempts(self) -> int:
        """Remove the attempt directories no running attempt holds (a killed worker's, an
        attempt that lost its lease); how many were removed. A directory of this worker's
        own builds, or whose task the queue shows running under that lease, stays."""
        removed = 0
        root = str(self.config.checkouts_dir)
        for project in await self._workspace.list_dir(root):
            base = f"{root}/{project}"
            names = await self._workspace.list_dir(base)
            if ".git" in names:
                # The one shared checkout of a version before attempt directories.
                await self._workspace.kill_processes_in(base)
                await self._git.remove_checkout(base)
                continue
            for name in names:
                match = _ATTEMPT_NAME.fullmatch(name)
                path = f"{base}/{name}"
                if match is None or path in self._attempt_dirs:
                    continue
                if await self._leased(match["task"], int(match["token"])):
                    continue
                # Whatever of the dead attempt still runs there (a pod's processes outlive
                # their worker) goes first, so nothing writes on while it is removed.
                killed = await self._workspace.kill_processes_in(path)
                log.info("worker.stale_attempt_removed", path=path, processes_killed=killed)
                await self._git.remove_checkout(path)
                removed += 1
        return removed

    async def _leased(self, task_id: str, token: int) -> bool:
        try:
            task = await self._queue.get(task_id)
        except TaskNotFoundError:
            return False
        return task.status is TaskStatus.RUNNING and task.lease_token == token

    async def _idle(self, stopper: asyncio.Future[Any]) -> None:
        # Wait for whichever comes first: stop, new work, a free slot, or the poll interval.
        self._wake.clear()
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._wake.wait())}
        if len(self._running) < self.config.concurrency:
            waiters.add(asyncio.ensure_future(self._queue.wait_for_work(self.config.idle_wait_s)))
        try:
            await asyncio.wait(
                {stopper, *waiters},
                timeout=self.config.idle_wait_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
            # gather, not suppress: a cancel aimed at run() itself still gets through.
            await asyncio.gather(*waiters, return_exceptions=True)

    def _start(self, lease: Lease) -> None:
        task = asyncio.create_task(self._run_build(lease), name=f"build:{lease.task_id}")
        self._running[lease.task_id] = task

        def done(finished: asyncio.Task[None]) -> None:
            if self._running.get(lease.task_id) is finished:
                del self._running[lease.task_id]
            self._wake.set()

        task.add_done_callback(done)

    async def _shutdown(self) -> None:
        if not self._running:
            return
        tasks = list(self._running.values())
        log.info("worker.draining", builds=len(tasks), grace_s=self.config.shutdown_grace_s)
        _, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_grace_s)
        for task in pending:
            task.cancel()
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=15.0)
            for task in stuck:
                log.error("worker.build_did_not_stop", task=task.get_name())

    async def _run_build(self, lease: Lease) -> None:
        try:
            await BuildRun(self, lease).execute()
        except asyncio.CancelledError:
            # Shutdown: the build did not finish in the grace period. Give the task back
            # so another worker runs it, without counting an attempt.
            with contextlib.suppress(ForgelineError):
                await asyncio.shield(self._queue.release(lease))
            raise
        except Exception:
            # Whatever broke, the task is left running: its lease expires and the queue
            # gives it to another attempt (which finds an already pushed commit).
            log.exception("worker.build_crashed", task_id=lease.task_id)


class BuildRun:
    """One build: the pipeline, its heartbeat and its cancel watch."""

    def __init__(self, worker: Worker, lease: Lease) -> None:
        self.w = worker
        self.lease = lease
        self.task_id = lease.task_id
        self.request = BuildRequest.from_task(lease.task)
        self.cancel_requested = asyncio.Event()
        #: Set on cancel or on a lost lease: whatever waits on something long stops.
        self.stop = asyncio.Event()
        #: Set when another worker may own the task now: nothing may be published.
        self.lease_gone = asyncio.Event()
        self.agent_run_id: str | None = None
        #: This attempt's own checkout.
        self.workdir = attempt_dir(worker.config.checkouts_dir, self.request.project, lease)
        #: What the build produced so far (commit, branch, pipeline), kept on failure too.
        self.artifacts: dict[str, Any] = {}
        self.provider = PIPELINE
        self.started = time.monotonic()
        self.log = log.bind(task_id=self.task_id, project=self.request.project)

    # --- events ---------------------------------------------------------------------------

    async def emit(self, event: AgentEvent) -> None:
        """Store an event of this task, redacted; a short database blip is ridden out
        (bounded retries) rather than ending a long agent run."""
        redacted = redact_event(event, self.w._redactor)
        for delay in _EMIT_RETRY_DELAYS:
            try:
                await self.w._store.append_event(self.task_id, redacted)
                return
            except StorageError as exc:
                self.log.warning("build.event_not_stored", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
        await self.w._store.append_event(self.task_id, redacted)

    async def status(self, state: str, **detail: Any) -> None:
        """A pipeline ``status`` event."""
        await self.emit(AgentEvent(data=StatusData(state=state, detail=detail), provider=PIPELINE))

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """Record a step's start and end (with its duration and outcome)."""
        await self.status("step", step=name, phase="started")
        started = time.monotonic()
        info: dict[str, Any] = {"outcome": "ok"}
        try:
            yield info
        except BaseException as exc:
            info["outcome"] = "cancelled" if isinstance(exc, BuildCancelledError) else "failed"
            raise
        finally:
            took = time.monotonic() - started
            if self.w._metrics is not None:
                self.w._metrics.step_finished(name, str(info["outcome"]), took)
            with contextlib.suppress(ForgelineError):
                await asyncio.shield(
                    self.status(
                        "step",
                        step=name,
                        phase="finished",
                        duration_ms=int(took * 1000),
                        **info,
                    )
                )

    def check_cancel(self) -> None:
        """Raise if the task's cancel was requested or its lease lost."""
        if self.lease_gone.is_set():
            raise _LeaseGoneError
        if self.cancel_requested.is_set():
            raise BuildCancelledError

    # --- watchers -------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        lease_s = self.w.config.lease_s
        interval = max(0.2, lease_s / 3)
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                task = await self.w._queue.heartbeat(self.lease, lease_s=lease_s)
            except LeaseLostError:
                self.log.warning("build.lease_lost")
                await self._lose_lease()
                return
            except Exception as exc:  # noqa: BLE001 - a heartbeat must never die quietly
                self.log.warning("build.heartbeat_failed", error=str(exc))
                # Past the lease without a renewal, another worker may own the task: stop
                # now rather than run (and push) beside it.
                if time.monotonic() - renewed >= lease_s - interval:
                    await self._lose_lease()
                    return
                continue
            renewed = time.monotonic()
            if task.cancel_requested and not self.cancel_requested.is_set():
                await self._on_cancel()

    async def _lose_lease(self) -> None:
        self.lease_gone.set()
        self.stop.set()
        await self._stop_agent()

    async def prove_lease(self) -> None:
        """Renew the lease now, or end the run: only an attempt that still holds its lease
        (its fencing token is the task's current one) may commit or push."""
        try:
            await self.w._queue.heartbeat(self.lease, lease_s=self.w.config.lease_s)
        except LeaseLostError:
            self.log.warning("build.lease_lost_before_publishing")
            await self._lose_lease()
        self.check_cancel()

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
            raise _LeaseGoneError
        return task.result()

    async def _cancel_watch(self) -> None:
        while not self.cancel_requested.is_set():
            try:
                if await self.w._queue.wait_for_cancel(self.task_id, 5.0):
                    await self._on_cancel()
                    return
            except Exception as exc:  # noqa: BLE001 - keep watching through outages
                self.log.warning("build.cancel_watch_failed", error=str(exc))
                await asyncio.sleep(1.0)

    async def _on_cancel(self) -> None:
        self.log.info("build.cancel_requested")
        self.cancel_requested.set()
        self.stop.set()
        await self._stop_agent()

    async def _stop_agent(self) -> None:
        if self.agent_run_id is None:
            return
        try:
            await self.w._registry.get(self.provider).cancel(self.agent_run_id)
        except Exception as exc:  # noqa: BLE001 - the port says cancel never raises; be sure
            self.log.error("build.agent_cancel_failed", error=str(exc))

    # --- the run --------------------------------------------------------------------------

    async def execute(self) -> None:
        """Run the pipeline with its watchers, record the outcome, remove the checkout."""
        self.w._attempt_dirs.add(self.workdir)
        try:
            await self._execute()
        finally:
            await asyncio.shield(self._remove_checkout())

    async def _remove_checkout(self) -> None:
        try:
            await self.w._git.remove_checkout(self.workdir)
        except ForgelineError as exc:
            # The sweep of a later worker removes it (it is not leased any more).
            self.log.warning("build.checkout_not_removed", error=exc.message)
        finally:
            self.w._attempt_dirs.discard(self.workdir)

    async def _execute(self) -> None:
        self.log.info("build.started", attempt=self.lease.task.attempts, workdir=self.workdir)
        watchers = [
            asyncio.create_task(self._heartbeat(), name=f"heartbeat:{self.task_id}"),
            asyncio.create_task(self._cancel_watch(), name=f"cancel-watch:{self.task_id}"),
        ]
        try:
            if not self.w.config.sandboxed:
                await self.status(
                    "warning",
                    message="the agent runs without a sandbox (FORGELINE_SANDBOX=none): it "
                    "can read and write whatever forgeline can",
                )
            outcome = await self._pipeline()
        except _LeaseGoneError:
            return
        except BuildCancelledError:
            outcome = _Outcome(TaskStatus.CANCELLED, "build cancelled", self.artifacts)
        except ForgelineError as exc:
            if _retryable(exc) and await self._retry(exc.message):
                return
            outcome = _Outcome(TaskStatus.FAILED, exc.message, self.artifacts, error=exc.message)
        except Exception as exc:
            # A bug, not an answer: fail the task with a generic reason (details in the
            # log) instead of leaving it running until its lease expires.
            self.log.exception("build.unexpected_error")
            message = f"internal error ({type(exc).__name__}); see the worker's log"
            outcome = _Outcome(TaskStatus.FAILED, message, self.artifacts, error=message)
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        if self.lease_gone.is_set():
            return
        await self._finish(outcome)

    async def _retry(self, message: str) -> bool:
        """Give an infrastructure failure back to the queue; True if it will run again."""
        task = self.lease.task
        if task.attempts >= task.max_attempts:
            return False
        with contextlib.suppress(ForgelineError):
            await self.emit(
                AgentEvent(
                    data=ErrorData(kind="infrastructure", message=message), provider=PIPELINE
                )
            )
            await self.status("retrying", attempt=task.attempts, max_attempts=task.max_attempts)
        try:
            task = await self.w._queue.fail(
                self.lease, self.w._redactor.redact(message), retryable=True
            )
        except LeaseLostError:
            return True
        if task.status is not TaskStatus.QUEUED:
            # The queue made it final (cancel requested meanwhile): finish it properly.
            await finish_without_run(
                task, store=self.w._store, callbacks=self.w._callbacks, provider=self.provider
            )
            return True
        self.log.warning("build.retrying", error=message)
        return True

    async def _pipeline(self) -> _Outcome:
        spec = self.request.spec
        project = await self.w._store.get_project(self.request.project)
        agent = self.w._registry.get(project.agent_choice(spec.provider, spec.model)[0])
        self.provider = agent.name
        env: dict[str, Secret] = {}
        token: Secret | None = None
        if self.w._injector is not None:
            env = await self.w._injector.for_build(project, self.task_id)
            if project.repo_url.startswith(("https://", "http://")):
                token = await self._optional_secret(self.w.config.git_token_credential, project)
        remote = GitRemote(project.repo_url, token=token)
        workdir = self.workdir
        branch = project.default_branch

        async with self.step("checkout") as info:
            checkout = await self.w._git.prepare_checkout(project.name, remote, branch, workdir)
            info["head"] = checkout.head
        self.check_cancel()

        target = branch if spec.auto_deploy else review_branch(self.task_id)
        artifacts = self.artifacts
        earlier = (
            None if checkout.empty else await self.w._git.find_task_commit(workdir, self.task_id)
        )
        if earlier is not None:
            # An earlier attempt of this task pushed already (its worker died after the
            # push): do not run the agent twice, report that commit.
            await self.status("already_pushed", commit_sha=earlier)
            artifacts["commit_sha"] = earlier
            return await self._after_push(
                project, _Outcome(TaskStatus.COMPLETED, "", artifacts), earlier, target
            )

        template = spec.template or project.template
        if checkout.empty and template and self.w._templates is not None:
            async with self.step("template") as info:
                info["template"] = template
                provider = self.w._templates
                variables = {**project.variables, **spec.variables}
                await asyncio.to_thread(
                    provider.render, template, variables, Path(workdir), project_name=project.name
                )
            self.check_cancel()

        result = await self._run_agent(agent, project, spec, workdir, env)
        self.check_cancel()  # a cancel or a lost lease stopped the agent
        if result.status is RunStatus.CANCELLED:
            raise BuildCancelledError
        if result.status is not RunStatus.SUCCEEDED:
            return _Outcome(TaskStatus.FAILED, result.text, agent=result, error=result.text)

        outcome = _Outcome(TaskStatus.COMPLETED, result.text, artifacts, agent=result)
        await self.prove_lease()
        async with self.step("commit") as info:
            if not await self.w._git.has_changes(workdir):
                info["outcome"] = "skipped"
                info["reason"] = "no file changed"
                return outcome
            sha = await self.w._git.commit(
                workdir,
                build_commit_message(spec.prompt),
                self.w.config.author,
                {"Forgeline-Task": self.task_id},
            )
            info["commit_sha"] = sha
        self.check_cancel()

        await self.prove_lease()
        async with self.step("push") as info:
            # A review branch belongs to this task alone: a retried attempt replaces it.
            pushed = await self.unless_lease_lost(
                self.w._git.push(workdir, remote, target, force=not spec.auto_deploy)
            )
            info.update(branch=target, commit_sha=pushed.sha)
        artifacts["commit_sha"] = pushed.sha
        return await self._after_push(project, outcome, pushed.sha, target)

    async def _after_push(
        self, project: Project, outcome: _Outcome, sha: str, target: str
    ) -> _Outcome:
        spec = self.request.spec
        if not spec.auto_deploy:
            outcome.artifacts["branch"] = target
            return outcome
        deploy_url = project.settings.get("deploy_url")
        if deploy_url:
            outcome.artifacts["deploy_url"] = deploy_url
        repo_id = project.settings.get("woodpecker_repo_id")
        if self.w._ci is None or repo_id is None:
            await self.status(
                "step",
                step="ci",
                phase="skipped",
                reason="no CI configured" if self.w._ci is None else "project not activated in CI",
            )
            return outcome
        return await self._ci_step(self.w._ci, int(repo_id), sha, target, outcome)

    async def _ci_step(
        self, ci: CIProvider, repo_id: int, sha: str, branch: str, outcome: _Outcome
    ) -> _Outcome:
        async with self.step("ci") as info:
            pipeline = await ci.find_pipeline(
                repo_id, sha, self.w.config.ci_find_timeout_s, branch=branch
            )
            if pipeline is None:
                pipeline = await ci.trigger(repo_id, branch, {"TASK_ID": self.task_id})
            if pipeline is None:
                info["outcome"] = "skipped"
                info["reason"] = "CI started no pipeline for this commit"
                return outcome
            info["pipeline"] = pipeline.number
            outcome.artifacts["pipeline"] = pipeline.number
            try:
                final = await self._follow(ci, repo_id, pipeline)
            except BuildCancelledError:
                # The task's cancel stops its deploy too; a lost lease does not (the task
                # goes on under another worker, which follows the same pipeline).
                await ci.cancel(repo_id, pipeline.number)
                raise
            outcome.artifacts["pipeline_status"] = final.status
            info["pipeline_status"] = final.status
            if final.status != "success":
                step = f" at step {final.failed_step!r}" if final.failed_step else ""
                message = f"CI pipeline {final.number} ended {final.status}{step}"
                info["outcome"] = "failed"
                outcome.status = TaskStatus.FAILED
                outcome.error = message
                outcome.output = message if not outcome.output else f"{outcome.output}\n\n{message}"
        return outcome

    async def _follow(
        self, ci: CIProvider, repo_id: int, pipeline: PipelineStatus
    ) -> PipelineStatus:
        async def on_change(status: PipelineStatus) -> None:
            await self.status("pipeline", pipeline=status.number, pipeline_status=status.status)

        follow = asyncio.ensure_future(
            ci.follow(
                repo_id, pipeline.number, self.w.config.ci_pipeline_timeout_s, on_change=on_change
            )
        )
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({follow, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if follow.done():
                return follow.result()
        finally:
            for waiter in (follow, stopped):
                waiter.cancel()
            await asyncio.gather(follow, stopped, return_exceptions=True)
        self.check_cancel()  # a lost lease ends the run here, silently
        raise BuildCancelledError  # pragma: no cover - stop is only set with one of them

    async def _optional_secret(self, name: str, project: Project) -> Secret | None:
        from forgeline.domain.errors import CredentialNotFoundError

        assert self.w._injector is not None  # noqa: S101 - checked by the caller
        try:
            return await self.w._injector.secret(name, project=project.name, task_id=self.task_id)
        except CredentialNotFoundError:
            return None

    async def _session_to_resume(
        self, agent: CodeAgent, project: Project, spec: BuildSpec
    ) -> str | None:
        """The session the agent resumes: the one the spec names, or with ``continue`` the
        project's last of this provider (none yet: a new session, and the events say so)."""
        if not spec.continue_session:
            return spec.resume_session
        session = await self.w._store.last_session(project.name, agent.name)
        if session is None:
            await self.status(
                "new_session", reason=f"no completed {agent.name} build of this project yet"
            )
        else:
            await self.status("continuing", session_id=session)
        return session

    async def _run_agent(
        self,
        agent: CodeAgent,
        project: Project,
        spec: BuildSpec,
        workdir: str,
        env: Mapping[str, Secret],
    ) -> AgentResult:
        prompt = spec.prompt
        template = spec.template or project.template
        if template and self.w._templates is not None:
            with contextlib.suppress(ForgelineError):
                described = self.w._templates.get_template(template)
                context = described.prompt_context({**project.variables, **spec.variables})
                prompt = f"{context}\n\n{prompt}"
        request = AgentRequest(
            prompt=prompt,
            workdir=workdir,
            provider=agent.name,
            model=project.agent_choice(spec.provider, spec.model)[1],
            timeout_s=spec.timeout_s,
            resume_session=await self._session_to_resume(agent, project, spec),
            env=reveal_env(env),
            task_id=self.task_id,
            state_key=project.name,
        )
        self.agent_run_id = request.run_id
        if self.cancel_requested.is_set():
            await agent.cancel(request.run_id)
        result: AgentResult | None = None
        reported = ""  # the last error the agent reported, should its result say nothing
        async with self.step("agent") as info:
            info["provider"] = agent.name
            stream = agent.execute(request)
            try:
                async for event in stream:
                    if isinstance(event.data, AgentResult):
                        result = event.data
                        continue
                    if isinstance(event.data, ErrorData):
                        reported = event.data.message
                    await self.emit(event)
            finally:
                await stream.aclose()
            if result is None:  # pragma: no cover - the CodeAgent port guarantees a result
                result = AgentResult(
                    status=RunStatus.FAILED, text="the agent ended without a result"
                )
            if result.status in (RunStatus.FAILED, RunStatus.TIMED_OUT) and not result.text.strip():
                # The task's last_error is this text: never leave it empty.
                said = f"{agent.name} run ended {result.status.value} without saying why"
                result = replace(result, text=reported or said)
            info["status"] = result.status.value
            if result.status is not RunStatus.SUCCEEDED:
                info["outcome"] = "cancelled" if result.status is RunStatus.CANCELLED else "failed"
        return result

    # --- the end --------------------------------------------------------------------------

    async def _finish(self, outcome: _Outcome) -> None:
        redact = self.w._redactor
        output = redact.redact(outcome.output or "")
        task_result = {
            "output": output,
            "artifacts": outcome.artifacts,
            "agent": _agent_summary(outcome.agent, self.provider),
        }
        if outcome.error:
            task_result["error"] = redact.redact(outcome.error)
            await self.emit(
                AgentEvent(
                    data=ErrorData(kind="build_" + outcome.status.value, message=outcome.error),
                    provider=PIPELINE,
                )
            )
        # The callback goes into the durable outbox before the task is final: if this
        # worker dies in between, the task runs again and its enqueue (same idempotency
        # key) returns this delivery, so the requester hears exactly once either way.
        await self._callback(outcome.status, output, outcome.artifacts)
        session = outcome.agent.session_id if outcome.agent is not None else None
        if outcome.status is TaskStatus.COMPLETED and session:
            # Before the task is final: the project's next build may start the moment it
            # is, and one that continues must find this session.
            await self.w._store.record_session(
                self.request.project, self.provider, session, self.task_id
            )
        try:
            if outcome.status is TaskStatus.COMPLETED:
                await self.w._queue.complete(self.lease, task_result)
            elif outcome.status is TaskStatus.CANCELLED:
                await self.w._queue.finish_cancelled(self.lease, task_result)
            else:
                await self.w._queue.fail(
                    self.lease,
                    str(task_result.get("error") or output),
                    retryable=False,
                    result=task_result,
                )
        except LeaseLostError:
            self.log.warning("build.lease_lost_at_finish")
            return
        agent = outcome.agent or AgentResult(status=RunStatus.FAILED)
        final = replace(
            agent,
            status=_run_status(outcome.status, agent),
            text=output,
            duration_ms=int((time.monotonic() - self.started) * 1000),
        )
        await self.emit(AgentEvent(data=final, provider=self.provider, session_id=final.session_id))
        if self.w._metrics is not None:
            self.w._metrics.build_finished(
                outcome.status.value, time.monotonic() - self.started, agent.cost_usd, self.provider
            )
        self.log.info("build.finished", status=outcome.status.value, **outcome.artifacts)

    async def _callback(
        self, status: TaskStatus, output: str, artifacts: Mapping[str, Any]
    ) -> None:
        url = self.request.spec.callback_url
        if not url or self.w._callbacks is None:
            return
        payload = build_payload(
            task_id=self.task_id,
            project_id=self.request.project,
            status=status.value,
            output=output,
            artifacts=artifacts,
        )
        # No except: a callback that cannot be queued must not be lost behind a final
        # status. The task stays running, its lease expires, and the next attempt (which
        # finds the pushed commit) queues it.
        await self.w._callbacks.enqueue(
            self.task_id,
            url,
            BUILD_COMPLETED,
            self.w._redactor.redact_obj(payload),
            idempotency_key=f"{self.task_id}:{BUILD_COMPLETED}",
        )


def _run_status(status: TaskStatus, agent: AgentResult) -> RunStatus:
    if status is TaskStatus.COMPLETED:
        return RunStatus.SUCCEEDED
    if status is TaskStatus.CANCELLED:
        return RunStatus.CANCELLED
    return RunStatus.TIMED_OUT if agent.status is RunStatus.TIMED_OUT else RunStatus.FAILED


def _agent_summary(result: AgentResult | None, provider: str) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "provider": provider,
        "status": result.status.value,
        "session_id": result.session_id,
        "num_turns": result.num_turns,
        "duration_ms": result.duration_ms,
        "cost_usd": result.cost_usd,
        "cost_source": result.cost_source.value,
        "usage": result.usage.to_dict(),
    }
