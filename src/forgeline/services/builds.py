"""BuildService: accept build requests; list, show, cancel and retry build tasks; what a
build pushed and a transcript of what it did.

Every read takes the projects the caller may see (``projects``; ``None``: every one): a
build task of another project is not found.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import json
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from forgeline.domain.agent import AgentEvent, AgentResult, RunStatus
from forgeline.domain.build import BuildResult
from forgeline.domain.callbacks import BUILD_COMPLETED, build_payload
from forgeline.domain.errors import (
    AgentUnavailableError,
    ConflictError,
    IdempotencyKeyReusedError,
    MissingCredentialsError,
    NoCommitError,
    TaskNotFoundError,
    TaskStateError,
    TemplateNotFoundError,
    UnknownProviderError,
    ValidationError,
)
from forgeline.domain.project import Project
from forgeline.domain.task import BuildSpec, TaskStatus, WorkTask
from forgeline.ports.credentials import CredentialStore
from forgeline.ports.queue import Enqueued, WorkQueue
from forgeline.ports.store import Store, StoredEvent
from forgeline.ports.templates import TemplateProvider
from forgeline.services.registry import AvailabilityCache, ProviderRegistry
from forgeline.services.transcript import transcript

if TYPE_CHECKING:
    # Only its type: the dispatcher loads httpx, which submitting a build does not need.
    from forgeline.services.callbacks import CallbackDispatcher

#: The queue ``kind`` of build tasks.
BUILD_KIND = "build"
#: Attempts of a build whose worker died or whose infrastructure failed (never of an
#: agent that ran and failed: that is an answer, not an accident).
BUILD_MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class BuildRequest:
    """What the worker needs to run a build: the project and the spec; ``retry_of`` is the
    task this one re-runs."""

    project: str
    spec: BuildSpec
    retry_of: str | None = None

    def to_payload(self) -> dict[str, Any]:
        """The queued task's payload."""
        payload: dict[str, Any] = {"project": self.project, "spec": self.spec.to_payload()}
        if self.retry_of is not None:
            payload["retry_of"] = self.retry_of
        return payload

    @classmethod
    def from_task(cls, task: WorkTask) -> BuildRequest:
        """The request a build task carries."""
        return cls(
            project=task.payload["project"],
            spec=BuildSpec.from_payload(task.payload["spec"]),
            retry_of=task.payload.get("retry_of"),
        )

    def digest(self) -> str:
        """SHA-256 of the request's canonical JSON (the validated spec with its defaults,
        keys sorted): what an ``Idempotency-Key`` is stored with, so a retry can be told
        from another request sent under the same key."""
        canonical = json.dumps(self.to_payload(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class BuildService:
    """Validates build requests and puts them in the queue, one line per project.

    With ``check_availability`` (this process runs builds itself), a build for a provider
    whose program is not available here is refused at once; without it (an API whose
    builds run on other machines) only the worker can tell, and the build fails saying why.
    """

    def __init__(
        self,
        *,
        queue: WorkQueue,
        store: Store,
        registry: ProviderRegistry,
        max_queued_per_project: int,
        check_callback_url: Callable[[str], Awaitable[Any]] | None = None,
        callbacks: CallbackDispatcher | None = None,
        templates: TemplateProvider | None = None,
        credentials: CredentialStore | None = None,
        check_availability: bool = False,
    ) -> None:
        self._queue = queue
        self._store = store
        self._registry = registry
        self._max_queued = max_queued_per_project
        self._check_callback_url = check_callback_url
        self._callbacks = callbacks
        self._templates = templates
        self._credentials = credentials
        self._availability = AvailabilityCache() if check_availability else None

    async def submit(
        self,
        project_name: str,
        spec: BuildSpec,
        *,
        idempotency_key: str | None = None,
        client: str = "",
        retry_of: str | None = None,
    ) -> Enqueued:
        """Queue a build of ``project_name`` (a re-run of the task ``retry_of``).

        An ``idempotency_key`` is scoped to the ``client`` (the caller's token) and the
        project: sent again with the same request it gives the first task back
        (``created=False``), even once the queue is full; with another request it is an
        ``IdempotencyKeyReusedError`` (422).

        Raises ``ProjectNotFoundError`` (404), ``ValidationError`` (422: blank prompt, bad
        timeout, unknown provider or template, refused callback URL),
        ``AgentUnavailableError`` or ``MissingCredentialsError`` (424: the provider's
        program is missing here, the project declares a credential no scope holds) or
        ``CapacityError`` (429).
        """
        spec.validate()
        request = BuildRequest(project_name, spec, retry_of)
        digest = request.digest()
        key = None
        if idempotency_key:
            key = f"{client}:{project_name}:{idempotency_key}"
            # A retry of an accepted request gets its task back, whatever changed since
            # (the project's queue may be full by now).
            existing = await self._queue.find_by_idempotency_key(key)
            if existing is not None:
                return _replayed(existing, digest, idempotency_key)
        project = await self._store.get_project(project_name)
        if project.state != "ready":
            raise ConflictError(
                f"project {project.name!r} is {project.state}: create it again to finish"
            )
        await self._check_dependencies(project, spec)
        if spec.callback_url and self._check_callback_url is not None:
            await self._check_callback_url(spec.callback_url)
        # The queue counts and inserts in one step: concurrent submits, in any number of
        # API processes, never queue more than the cap.
        enqueued = await self._queue.enqueue(
            BUILD_KIND,
            request.to_payload(),
            max_attempts=BUILD_MAX_ATTEMPTS,
            idempotency_key=key,
            request_hash=digest if key is not None else None,
            concurrency_key=project.name,
            max_queued=self._max_queued,
        )
        if idempotency_key and not enqueued.created:
            # A concurrent request with the same key was stored first.
            return _replayed(enqueued.task, digest, idempotency_key)
        return enqueued

    async def _check_dependencies(self, project: Project, spec: BuildSpec) -> None:
        """Refuse now what the worker could only fail on: an unknown provider or template,
        a provider missing here, credentials the project declares that no scope holds."""
        provider, _ = project.agent_choice(spec.provider, spec.model)
        try:
            agent = self._registry.get(provider)
        except UnknownProviderError as exc:
            raise ValidationError(exc.message, field="provider") from exc
        if spec.template and self._templates is not None:
            try:
                await asyncio.to_thread(self._templates.get_template, spec.template)
            except TemplateNotFoundError as exc:
                raise ValidationError(exc.message, field="template") from exc
        if self._availability is not None:
            capabilities = await self._availability.check(agent)
            if not capabilities.available:
                raise AgentUnavailableError(
                    f"provider {agent.name!r} is not available here: {capabilities.detail}",
                    provider=agent.name,
                )
        if project.credentials and self._credentials is not None:
            held = {c.name for c in await self._credentials.list(project=project.name)}
            missing = {var: n for var, n in project.credentials.items() if n not in held}
            if missing:
                raise MissingCredentialsError(project.name, missing)

    async def list(
        self,
        *,
        projects: Collection[str] | None = None,
        status: TaskStatus | None = None,
        since: datetime | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> tuple[list[WorkTask], int | None]:
        """Build tasks of ``projects``, newest first, at most ``limit`` enqueued before the
        position ``cursor``; and the cursor of the next page (``None`` after the last)."""
        page = await self._queue.list(
            kind=BUILD_KIND,
            concurrency_keys=projects,
            status=status,
            since=since,
            before=cursor,
            limit=limit + 1,
        )
        more = len(page) > limit
        return page[:limit], page[limit - 1].seq if more else None

    async def get(self, task_id: str, *, projects: Collection[str] | None = None) -> WorkTask:
        """The task, or ``TaskNotFoundError`` (also for a build of a project not in
        ``projects``)."""
        task = await self._queue.get(task_id)
        if projects is not None and (
            task.kind != BUILD_KIND or BuildRequest.from_task(task).project not in projects
        ):
            raise TaskNotFoundError(task_id)
        return task

    async def retry(
        self,
        task_id: str,
        *,
        projects: Collection[str] | None = None,
        idempotency_key: str | None = None,
        client: str = "",
    ) -> Enqueued:
        """Queue a new build with the spec of the finished build ``task_id``, linked to it
        (``retry_of``); refused with ``TaskStateError`` (409) while it is not final. Checked
        and capped as a new submit is (:meth:`submit`)."""
        task = await self.get(task_id, projects=projects)
        if task.kind != BUILD_KIND or not task.status.is_final:
            raise TaskStateError(task_id, task.status.value, "retry")
        request = BuildRequest.from_task(task)
        return await self.submit(
            request.project,
            request.spec,
            idempotency_key=idempotency_key,
            client=client,
            retry_of=task.id,
        )

    async def pushed_commit(
        self, task_id: str, *, projects: Collection[str] | None = None
    ) -> tuple[str, str]:
        """The project and the commit a finished build pushed; ``NoCommitError`` (404) for
        a build that is not finished or pushed nothing."""
        task = await self.get(task_id, projects=projects)
        if not task.status.is_final:
            raise NoCommitError(task_id, f"it is {task.status.value}")
        sha = BuildResult.stored_artifacts(task.result).commit_sha
        if sha is None:
            raise NoCommitError(task_id, f"it ended {task.status.value} without pushing")
        return BuildRequest.from_task(task).project, sha

    async def events(self, task_id: str, *, after: int = 0) -> builtins.list[StoredEvent]:
        """The task's events after position ``after`` so far, in order."""
        events: builtins.list[StoredEvent] = []
        while page := await self._store.list_events(task_id, after_seq=after, limit=1000):
            events.extend(page)
            after = page[-1].seq
        return events

    async def transcript(self, task_id: str, *, projects: Collection[str] | None = None) -> str:
        """The task's events so far as plain text, one line each (see
        :func:`~forgeline.services.transcript.transcript`)."""
        await self.get(task_id, projects=projects)
        return transcript(stored.event() for stored in await self.events(task_id))

    async def cancel(self, task_id: str, *, projects: Collection[str] | None = None) -> WorkTask:
        """Cancel a queued build now, or ask its worker to stop a running one.

        A build cancelled before any worker took it ends here: its stream gets its
        ``result`` event and its requester the callback, as a worker would have sent.
        """
        await self.get(task_id, projects=projects)
        task = await self._queue.cancel(task_id)
        if task.status is TaskStatus.CANCELLED and task.kind == BUILD_KIND:
            await finish_without_run(
                task,
                store=self._store,
                callbacks=self._callbacks,
                provider=self._registry.default_name or "forgeline",
            )
        return task


def _replayed(task: WorkTask, digest: str, idempotency_key: str) -> Enqueued:
    """The task an idempotency key was first used for, if this is the same request.
    Tasks stored before requests were hashed (no ``request_hash``) match any request."""
    if task.request_hash is not None and task.request_hash != digest:
        raise IdempotencyKeyReusedError(idempotency_key)
    return Enqueued(task=task, created=False)


async def finish_without_run(
    task: WorkTask, *, store: Store, callbacks: CallbackDispatcher | None, provider: str
) -> bool:
    """End the stream and call back for a build task the queue made final without a
    worker finishing it: cancelled while queued, given up after its lease expired too
    often, or cancelled while its worker shut down. Safe to repeat: nothing is written
    when the task's stream already ends with its ``result``, and the callback's
    idempotency key keeps it to one delivery. True when it wrote the ``result`` now."""
    if not task.status.is_final or task.kind != BUILD_KIND:
        return False
    last = await store.last_event(task.id)
    if last is not None and last.type == "result":
        return False
    request = BuildRequest.from_task(task)
    if task.status is TaskStatus.CANCELLED:
        run_status, output = RunStatus.CANCELLED, "build cancelled before it finished"
    else:
        run_status = RunStatus.FAILED
        output = f"build failed: {task.last_error or 'no worker could finish it'}"
    if request.spec.callback_url and callbacks is not None:
        await callbacks.enqueue(
            task.id,
            request.spec.callback_url,
            BUILD_COMPLETED,
            build_payload(
                task_id=task.id,
                project_id=request.project,
                status=task.status.value,
                output=output,
            ),
            idempotency_key=f"{task.id}:{BUILD_COMPLETED}",
        )
    await store.append_event(
        task.id,
        AgentEvent(
            data=AgentResult(status=run_status, text=output),
            provider=request.spec.provider or provider,
        ),
    )
    return True
