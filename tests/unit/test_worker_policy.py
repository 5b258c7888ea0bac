"""The worker's failure policy, in milliseconds: a scripted agent, a fake git, a fake clock
and a SQLite queue and store in a temporary file.

What is decided here: an agent that ran and failed is an answer (no retry); an accident of
the infrastructure goes back to the queue until its attempts are used up; a lost lease ends
the run without publishing anything; a cancel seen before the agent never starts it; a
cancel during CI stops the pipeline too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from forgeline.adapters.queue.sqlite import SqliteWorkQueue
from forgeline.adapters.sql.database import SqliteDatabase
from forgeline.adapters.sql.migrate import migrate
from forgeline.adapters.store.sql_store import SqlStore
from forgeline.adapters.workspace.local import LocalWorkspace
from forgeline.domain.agent import AgentRequest, RunStatus
from forgeline.domain.errors import (
    AgentUnavailableError,
    GitError,
    LeaseLostError,
    PushRejectedError,
    StorageError,
)
from forgeline.domain.git import GitAuthor
from forgeline.domain.project import Project
from forgeline.domain.secrets import Secret
from forgeline.domain.task import BuildSpec, Lease, TaskStatus, WorkTask
from forgeline.logs import Redactor
from forgeline.ports.ci import PipelineStatus, StatusListener
from forgeline.ports.store import StoredEvent
from forgeline.services.builds import BUILD_KIND, BuildRequest
from forgeline.services.registry import ProviderRegistry
from forgeline.services.worker import Worker, WorkerConfig
from forgeline.testing import FakeClock, FakeGit, ScriptedAgent

PROJECT = "demo"


class FlakyQueue(SqliteWorkQueue):
    """The SQLite queue, whose heartbeats a test can make fail: the lease taken by another
    worker (``lost``) or the database gone (``broken``)."""

    lost = False
    broken = False

    async def heartbeat(self, lease: Lease, *, lease_s: float) -> WorkTask:
        """Renew, unless the test took the lease away or broke the database."""
        if self.lost:
            raise LeaseLostError(lease.task_id, lease.token)
        if self.broken:
            raise StorageError("database unreachable")
        return await super().heartbeat(lease, lease_s=lease_s)


class FakeCI:
    """A CI server whose pipeline runs until cancelled, or ``ends`` with that status at
    its step ``deploy``; ``on_follow`` is awaited once the worker follows it."""

    def __init__(
        self, on_follow: Callable[[], Awaitable[None]], *, ends: str | None = None
    ) -> None:
        self.on_follow = on_follow
        self.ends = ends
        self.cancelled: list[tuple[int, int]] = []

    async def find_pipeline(
        self, repo_id: int, commit: str, timeout_s: float, *, branch: str = "main"
    ) -> PipelineStatus | None:
        """The commit's pipeline, number 7, running."""
        return PipelineStatus(number=7, status="running", commit=commit, branch=branch)

    async def trigger(
        self, repo_id: int, branch: str, variables: Mapping[str, str]
    ) -> PipelineStatus | None:
        """Never needed: the push started a pipeline."""
        raise AssertionError("trigger")

    async def follow(
        self,
        repo_id: int,
        number: int,
        timeout_s: float,
        *,
        on_change: StatusListener | None = None,
    ) -> PipelineStatus:
        """Run until it ``ends``, or forever (until the worker stops following)."""
        await self.on_follow()
        if self.ends is not None:
            return PipelineStatus(number=number, status=self.ends, failed_step="deploy")
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def cancel(self, repo_id: int, number: int) -> None:
        """Record the cancel."""
        self.cancelled.append((repo_id, number))

    async def activate(self, repo_full_name: str, *, forge_remote_id: str | None = None) -> int:
        """Not used by builds."""
        raise AssertionError("activate")

    async def set_secrets(self, repo_id: int, secrets: Mapping[str, Secret]) -> None:
        """Not used by builds."""
        raise AssertionError("set_secrets")

    async def get_pipeline(self, repo_id: int, number: int) -> PipelineStatus:
        """Not used by builds."""
        raise AssertionError("get_pipeline")

    async def aclose(self) -> None:
        """Nothing to close."""


@dataclass
class Parts:
    """One worker's world: its queue and store on a SQLite file, fake git and clock."""

    queue: FlakyQueue
    store: SqlStore
    git: FakeGit
    clock: FakeClock
    checkouts: Path

    def worker(self, agent: ScriptedAgent, *, ci: FakeCI | None = None) -> Worker:
        """A worker running ``agent``, its heartbeat every fake 10 s of a 30 s lease."""
        registry = ProviderRegistry()
        registry.register(agent)
        return Worker(
            WorkerConfig(
                name="unit-worker",
                checkouts_dir=self.checkouts,
                author=GitAuthor("forgeline", "bot@forgeline.invalid"),
                lease_s=30.0,
            ),
            queue=self.queue,
            store=self.store,
            registry=registry,
            git=self.git,
            workspace=LocalWorkspace(),
            redactor=Redactor(),
            ci=ci,
            clock=self.clock,
        )

    async def claim(self, *, max_attempts: int = 3, **spec: object) -> Lease:
        """Queue one build of the project and claim it."""
        request = BuildRequest(PROJECT, BuildSpec(prompt="make a page", **spec))  # type: ignore[arg-type]
        await self.queue.enqueue(BUILD_KIND, request.to_payload(), max_attempts=max_attempts)
        (lease,) = await self.queue.claim("unit-worker", lease_s=30.0, limit=1, kinds=[BUILD_KIND])
        return lease

    async def events(self, task_id: str) -> list[StoredEvent]:
        """The task's stored events."""
        return list(await self.store.list_events(task_id, after_seq=0, limit=1000))


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    """A migrated SQLite database with the project ``demo``, and the fakes."""
    db = SqliteDatabase(tmp_path / "forgeline.db")
    await db.open()
    await migrate(db)
    queue = FlakyQueue(db)
    store = SqlStore(db)
    await store.create_project(
        Project(name=PROJECT, repo_url=str(tmp_path / "remote.git"), settings={"deploy_url": ""})
    )
    try:
        yield Parts(queue, store, FakeGit(), FakeClock(), tmp_path / "checkouts")
    finally:
        await queue.aclose()
        await db.aclose()


def _states(events: list[StoredEvent]) -> list[str]:
    return [str(event.to_dict()["data"].get("state")) for event in events if event.type == "status"]


async def test_a_build_that_succeeds_pushes_one_commit_and_completes(parts: Parts) -> None:
    """The agent's work is committed with the task's trailer, pushed, and reported."""
    lease = await parts.claim()
    await parts.worker(ScriptedAgent()).run_build(lease)

    task = await parts.queue.get(lease.task_id)
    assert task.status is TaskStatus.COMPLETED
    (pushed,) = parts.git.pushes
    assert pushed[0] == "main"
    assert task.result is not None
    assert task.result["artifacts"]["commit_sha"] == pushed[1]
    assert parts.git.branches["main"][-1].trailers == {"Forgeline-Task": lease.task_id}
    events = await parts.events(lease.task_id)
    assert events[-1].type == "result"
    assert events[-1].to_dict()["data"]["status"] == "succeeded"
    assert not parts.checkouts.joinpath(PROJECT).exists() or not any(
        parts.checkouts.joinpath(PROJECT).iterdir()
    )


async def test_an_agent_that_ran_and_failed_is_an_answer_not_retried(parts: Parts) -> None:
    """A failed agent run fails the task at its first attempt, with the agent's words."""
    lease = await parts.claim()
    agent = ScriptedAgent(outcome=RunStatus.FAILED, text="the model refused")
    await parts.worker(agent).run_build(lease)

    task = await parts.queue.get(lease.task_id)
    assert task.status is TaskStatus.FAILED
    assert task.attempts == 1
    assert task.last_error == "the model refused"
    assert parts.git.pushes == []
    events = await parts.events(lease.task_id)
    assert events[-1].type == "result"
    assert events[-1].to_dict()["data"]["status"] == "failed"
    assert "retrying" not in _states(events)


@pytest.mark.parametrize("broken", ["git", "agent"])
async def test_an_accident_of_the_infrastructure_goes_back_to_the_queue(
    parts: Parts, broken: str
) -> None:
    """A failed fetch or a missing agent binary re-queues the task with the attempt
    counted, and says so in its events; no result yet."""
    lease = await parts.claim()
    agent = ScriptedAgent()
    if broken == "git":
        parts.git.fail_checkout = GitError("fetch failed: connection reset")
    else:
        agent = ScriptedAgent(
            unavailable=AgentUnavailableError("claude not installed", provider="claude-code")
        )
    await parts.worker(agent).run_build(lease)

    task = await parts.queue.get(lease.task_id)
    assert task.status is TaskStatus.QUEUED
    assert task.attempts == 1
    events = await parts.events(lease.task_id)
    assert "retrying" in _states(events)
    assert all(event.type != "result" for event in events)


async def test_the_last_attempt_of_an_accident_fails_the_task(parts: Parts) -> None:
    """With no attempt left, the infrastructure's error is the task's answer."""
    lease = await parts.claim(max_attempts=1)
    parts.git.fail_checkout = GitError("fetch failed: connection reset")
    await parts.worker(ScriptedAgent()).run_build(lease)

    task = await parts.queue.get(lease.task_id)
    assert task.status is TaskStatus.FAILED
    assert task.last_error is not None
    assert "fetch failed" in task.last_error
    events = await parts.events(lease.task_id)
    assert events[-1].type == "result"


async def test_a_lease_lost_during_the_agent_publishes_nothing(parts: Parts) -> None:
    """Another worker owns the task now: no commit, no push, no result, the task left to
    its new owner, the attempt's checkout removed."""
    lease = await parts.claim()

    async def lose(_request: AgentRequest) -> None:
        parts.queue.lost = True

    await parts.worker(ScriptedAgent(during=lose)).run_build(lease)

    assert parts.git.pushes == []
    assert parts.git.local == {}
    task = await parts.queue.get(lease.task_id)
    assert task.status is TaskStatus.RUNNING
    events = await parts.events(lease.task_id)
    assert all(event.type != "result" for event in events)
    assert not any(parts.checkouts.joinpath(PROJECT).iterdir())


async def test_heartbeats_failing_for_a_whole_lease_stop_the_agent(parts: Parts) -> None:
    """A worker that cannot renew its lease for as long as the lease lasts stops its
    agent and publishes nothing: another worker may run the task by now."""
    lease = await parts.claim()

    async def break_database(_request: AgentRequest) -> None:
        parts.queue.broken = True

    # The agent would think for an hour: only the lost lease ends it.
    agent = ScriptedAgent(during=break_database, hold_s=3600.0)
    await parts.worker(agent).run_build(lease)

    assert parts.git.pushes == []
    assert (await parts.queue.get(lease.task_id)).status is TaskStatus.RUNNING
    assert sum(parts.clock.sleeps) >= 30.0 - 10.0


async def test_a_cancel_seen_before_the_agent_never_starts_it(parts: Parts) -> None:
    """Cancelled while the checkout was made: the agent never runs, the task ends
    cancelled with its result event."""
    lease = await parts.claim()
    seen = asyncio.Event()

    async def cancel_and_wait() -> None:
        await parts.queue.cancel(lease.task_id)
        # Two heartbeat rounds: the second began after the cancel was requested.
        await parts.clock.sleeps_passed(2)
        seen.set()

    parts.git.after_checkout = cancel_and_wait
    agent = ScriptedAgent()
    await parts.worker(agent).run_build(lease)

    assert seen.is_set()
    assert agent.entered == {}
    task = await parts.queue.get(lease.task_id)
    assert task.status is TaskStatus.CANCELLED
    assert parts.git.pushes == []
    events = await parts.events(lease.task_id)
    assert events[-1].type == "result"
    assert events[-1].to_dict()["data"]["status"] == "cancelled"


async def test_a_cancel_during_ci_cancels_the_pipeline(parts: Parts) -> None:
    """The task's cancel stops its deploy too; what was pushed stays in the result."""
    await parts.store.update_project(
        Project(
            name=PROJECT,
            repo_url="/nowhere.git",
            settings={"woodpecker_repo_id": 3, "deploy_url": "https://demo.example"},
        )
    )
    lease = await parts.claim()

    async def cancel_now() -> None:
        await parts.queue.cancel(lease.task_id)

    ci = FakeCI(cancel_now)
    await parts.worker(ScriptedAgent(), ci=ci).run_build(lease)

    assert ci.cancelled == [(3, 7)]
    task = await parts.queue.get(lease.task_id)
    assert task.status is TaskStatus.CANCELLED
    assert task.result is not None
    (pushed,) = parts.git.pushes
    assert task.result["artifacts"]["commit_sha"] == pushed[1]
    assert task.result["artifacts"]["pipeline"] == 7


async def test_a_push_the_remote_refuses_is_an_answer(parts: Parts) -> None:
    """A refused push fails the task at once with the remote's reason; no retry."""
    lease = await parts.claim()
    parts.git.reject_push = PushRejectedError("refs/heads/main", "protected branch")
    await parts.worker(ScriptedAgent()).run_build(lease)

    task = await parts.queue.get(lease.task_id)
    assert task.status is TaskStatus.FAILED
    assert task.attempts == 1
    assert task.last_error is not None
    assert "protected branch" in task.last_error


async def test_a_pipeline_that_fails_fails_the_build_keeping_the_commit(parts: Parts) -> None:
    """CI is part of the answer: a failed pipeline fails the task, saying where, and the
    pushed commit and the pipeline stay in its result."""
    await parts.store.update_project(
        Project(name=PROJECT, repo_url="/nowhere.git", settings={"woodpecker_repo_id": 3})
    )
    lease = await parts.claim()

    async def nothing() -> None:
        return None

    await parts.worker(ScriptedAgent(), ci=FakeCI(nothing, ends="failure")).run_build(lease)

    task = await parts.queue.get(lease.task_id)
    assert task.status is TaskStatus.FAILED
    assert task.last_error == "CI pipeline 7 ended failure at step 'deploy'"
    assert task.result is not None
    assert task.result["artifacts"]["pipeline"] == 7
    assert task.result["artifacts"]["pipeline_status"] == "failure"
    (pushed,) = parts.git.pushes
    assert task.result["artifacts"]["commit_sha"] == pushed[1]
