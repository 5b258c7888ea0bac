"""The Worker: claims build tasks and runs each as one pipeline of steps.

The worker is a :class:`~forgeline.services.pool.LeasedPool` over the queue's build tasks;
each claim runs :func:`~forgeline.services.build_run.execute_build` (supervision and the
failure policy) over :func:`~forgeline.services.build_steps.pipeline` (the steps).

Every attempt works in a directory of its own, ``<checkouts>/<project>/<task id>.<lease
token>``, removed when the attempt ends; what a killed worker left behind is removed by the
next worker that sees it (at start and every few seconds), once the queue shows that no
running attempt holds that lease. Tasks the queue itself made final (given up after too
many lost leases, cancelled as their worker stopped) are finished here too: their
requester still gets a result and a callback.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from forgeline.domain.clock import SYSTEM_CLOCK, Clock
from forgeline.domain.errors import TaskNotFoundError
from forgeline.domain.git import GitAuthor
from forgeline.domain.task import Lease, TaskStatus
from forgeline.ports.ci import CIProvider
from forgeline.ports.git import Git
from forgeline.ports.queue import WorkQueue
from forgeline.ports.store import Store
from forgeline.ports.templates import TemplateProvider
from forgeline.ports.workspace import Workspace
from forgeline.services.build_run import (
    PIPELINE,
    BuildParts,
    Injects,
    Observes,
    execute_build,
)
from forgeline.services.build_steps import pipeline
from forgeline.services.builds import BUILD_KIND, BuildRequest, finish_without_run
from forgeline.services.pool import LeasedPool
from forgeline.services.redaction import TextRedactor
from forgeline.services.registry import ProviderRegistry

if TYPE_CHECKING:
    from forgeline.services.callbacks import CallbackDispatcher

log = structlog.get_logger("forgeline.worker")

#: An attempt directory's name: ``<task id>.<lease token>``.
_ATTEMPT_NAME = re.compile(r"(?P<task>[A-Za-z0-9_-]{1,64})\.(?P<token>[0-9]{1,19})")


def attempt_dir(checkouts_dir: Path, project: str, lease: Lease) -> str:
    """Where one attempt of a build works: never used by another attempt or task."""
    return str(checkouts_dir / project / f"{lease.task_id}.{lease.token}")


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
        callbacks: CallbackDispatcher | None = None,
        ci: CIProvider | None = None,
        templates: TemplateProvider | None = None,
        metrics: Observes | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self._queue = queue
        self._git = git
        self._workspace = workspace
        self._clock = clock
        #: What every build of this worker runs on.
        self.parts = BuildParts(
            settings=config,
            queue=queue,
            store=store,
            registry=registry,
            git=git,
            redactor=redactor,
            clock=clock,
            injector=injector,
            callbacks=callbacks,
            ci=ci,
            templates=templates,
            metrics=metrics,
        )
        self._pool = LeasedPool(
            self,
            self.run_build,
            name="build",
            concurrency=config.concurrency,
            idle_s=config.idle_wait_s,
        )
        #: Attempt directories of this worker's builds, kept by the sweep whatever the queue says.
        self._attempt_dirs: set[str] = set()
        self._last_recovery: float | None = None

    @property
    def running(self) -> list[str]:
        """Ids of the builds this worker runs now."""
        return self._pool.running

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run builds until ``stop`` is set, then shut down gracefully:
        running builds get ``shutdown_grace_s`` to finish, then are cancelled and their
        tasks given back to the queue for another worker."""
        log.info("worker.started", worker=self.config.name, concurrency=self.config.concurrency)
        if not self.config.sandboxed:
            log.warning("worker.unsandboxed", hint="FORGELINE_SANDBOX=none: agents run unconfined")
        try:
            await self._pool.serve(stop)
        finally:
            # Shutdown: builds that do not finish in the grace period are cancelled and
            # their tasks given back, without counting an attempt.
            await self._pool.drain(self.config.shutdown_grace_s)
        log.info("worker.stopped", worker=self.config.name)

    async def run_build(self, lease: Lease) -> None:
        """Run one claimed build to its end in its own attempt directory (what :meth:`run`
        does with each claim); the build removes the directory when it ends."""
        project = BuildRequest.from_task(lease.task).project
        workdir = attempt_dir(self.config.checkouts_dir, project, lease)
        self._attempt_dirs.add(workdir)
        try:
            await execute_build(self.parts, lease, workdir, pipeline)
        except Exception:
            # Whatever broke, the task is left running: its lease expires and the queue
            # gives it to another attempt (which finds an already pushed commit).
            log.exception("worker.build_crashed", task_id=lease.task_id)
        finally:
            self._attempt_dirs.discard(workdir)

    # --- the pool's source: the queue's build tasks ----------------------------------------

    def key(self, claimed: Lease) -> str:
        """The claimed build's task id."""
        return claimed.task_id

    async def claim(self, limit: int) -> Sequence[Lease]:
        """Recover what dead workers left (every half lease), then claim up to ``limit``
        builds."""
        now = self._clock.monotonic()
        if self._last_recovery is None or now - self._last_recovery > self.config.lease_s / 2:
            self._last_recovery = now
            await self._recover()
        if limit <= 0:
            return []
        return await self._queue.claim(
            self.config.name, lease_s=self.config.lease_s, limit=limit, kinds=[BUILD_KIND]
        )

    async def release(self, claimed: Lease) -> None:
        """Give the task back to the queue without counting an attempt."""
        await self._queue.release(claimed)

    async def wait_for_work(self, timeout_s: float) -> None:
        """Until the queue says a task was added, ``timeout_s`` at the longest."""
        await self._queue.wait_for_work(timeout_s)

    # --- what dead workers left -------------------------------------------------------------

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
                        store=self.parts.store,
                        callbacks=self.parts.callbacks,
                        provider=self.parts.registry.default_name or PIPELINE,
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
