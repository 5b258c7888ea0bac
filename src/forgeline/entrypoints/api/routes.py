"""The routes of DESIGN.md. Handlers translate HTTP to service calls and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from forgeline.bootstrap import Container
from forgeline.domain.agent import MAX_SEQ, MAX_TIMEOUT_S
from forgeline.domain.errors import (
    InvalidProjectNameError,
    ProjectNotFoundError,
    StorageError,
    TaskNotFoundError,
    ValidationError,
)
from forgeline.domain.inputs import LINE, MAX_JSON_DEPTH, check_text, map_json
from forgeline.domain.project import Project, validate_project_name
from forgeline.domain.task import BuildSpec, WorkTask
from forgeline.entrypoints.api.errors import error_body
from forgeline.entrypoints.api.fields import JsonObject, Name, Prompt, SecretValue, Url
from forgeline.ports.store import ApiToken
from forgeline.services.auth import AuthService, Role
from forgeline.services.builds import BuildRequest
from forgeline.services.events import Dropped, KeepAlive, StreamItem
from forgeline.services.registry import describe_agents
from forgeline.services.sessions import SESSION_COOKIE


def container_of(request: Request) -> Container:
    """The container built by the app's lifespan."""
    built: Container = request.app.state.container
    return built


ContainerDep = Annotated[Container, Depends(container_of)]


async def authenticated(
    container: ContainerDep, authorization: Annotated[str | None, Header()] = None
) -> ApiToken:
    """The caller's token (401 without a valid one)."""
    return await container.auth.authenticate(authorization)


TokenDep = Annotated[ApiToken, Depends(authenticated)]


async def authenticated_or_session(
    request: Request, container: ContainerDep, authorization: Annotated[str | None, Header()] = None
) -> ApiToken:
    """The caller's token, from its Authorization header or else from the dashboard's
    session cookie: a browser's ``EventSource`` cannot send headers. Only read-only routes
    take it (a cookie rides along on cross-site requests that only ``SameSite`` stops)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if authorization is None and cookie:
        return await container.sessions.check(cookie)
    return await container.auth.authenticate(authorization)


async def admin(token: TokenDep) -> ApiToken:
    """The caller's token if it may administer forgeline (403 otherwise)."""
    AuthService.require(token, Role.ADMIN)
    return token


AdminDep = Annotated[ApiToken, Depends(admin)]


def project_name(name: str) -> str:
    """The project name in the path; 404 at once for a name no project can have, so that
    garbage (a NUL byte, which PostgreSQL refuses in text) never reaches the database."""
    try:
        return validate_project_name(name)
    except InvalidProjectNameError:
        raise ProjectNotFoundError(name) from None


def task_id_of(task_id: str) -> str:
    """The task id in the path; 404 at once for one no task can have (forgeline makes ids
    without control characters), for the same reason."""
    try:
        return check_text(task_id, field="task_id", allow=LINE)
    except ValidationError:
        raise TaskNotFoundError(task_id) from None


ProjectName = Annotated[str, Depends(project_name)]
TaskId = Annotated[str, Depends(task_id_of)]

router = APIRouter()


# --- projects --------------------------------------------------------------------------------


class ProjectIn(BaseModel):
    """``POST /projects``."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(max_length=63, description="lowercase letters, digits and hyphens")
    template: Name | None = None
    variables: JsonObject = Field(default_factory=dict)
    repo_url: Url | None = Field(
        None,
        description="a forge URL (https://, http://, ssh://, user@host:path); default: an"
        " embedded repository under the git base",
    )
    credentials: dict[Name, Name] = Field(
        default_factory=dict, description="environment variable → credential name"
    )
    settings: JsonObject = Field(default_factory=dict)


def shown(value: Any) -> Any:
    """A stored free-form JSON value as a response shows it: cut at the depth requests may
    have (older versions stored deeper ones, which the serializers cannot handle)."""
    return map_json(value, max_depth=MAX_JSON_DEPTH)


def project_json(project: Project) -> dict[str, Any]:
    """A project as the API shows it."""
    return {
        "name": project.name,
        "repo_url": project.repo_url,
        "default_branch": project.default_branch,
        "template": project.template,
        "variables": shown(project.variables),
        "credentials": shown(project.credentials),
        "settings": shown(project.settings),
        "state": project.state,
        "created_at": project.created_at.isoformat() if project.created_at else None,
        "updated_at": project.updated_at.isoformat() if project.updated_at else None,
    }


@router.post("/projects", status_code=201, tags=["projects"])
async def create_project(
    body: ProjectIn, container: ContainerDep, _token: AdminDep, response: Response
) -> dict[str, Any]:
    """Create a project (from a template when named); 409 if a ready one has the name."""
    project, created = await container.projects.create(
        body.name,
        template=body.template,
        variables=body.variables,
        repo_url=body.repo_url,
        credentials=body.credentials,
        settings=body.settings,
    )
    if not created:
        response.status_code = 200
    return project_json(project)


@router.get("/projects", tags=["projects"])
async def list_projects(container: ContainerDep, _token: TokenDep) -> list[dict[str, Any]]:
    """Every project."""
    return [project_json(p) for p in await container.projects.list()]


@router.get("/projects/{name}", tags=["projects"])
async def show_project(
    name: ProjectName, container: ContainerDep, _token: TokenDep
) -> dict[str, Any]:
    """One project."""
    return project_json(await container.projects.get(name))


# --- builds and tasks ------------------------------------------------------------------------


class BuildIn(BaseModel):
    """``POST /project/{name}/build``: the build spec."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt
    template: Name | None = None
    variables: JsonObject = Field(default_factory=dict)
    auto_deploy: bool = True
    callback_url: Url | None = None
    provider: Name | None = None
    model: Name | None = None
    timeout_s: float = Field(1800.0, gt=0, le=MAX_TIMEOUT_S)
    resume_session: Name | None = None

    def spec(self) -> BuildSpec:
        """The domain's build spec."""
        return BuildSpec(**self.model_dump())


class Accepted(BaseModel):
    """A queued build."""

    task_id: str
    status: str


@router.post("/project/{name}/build", status_code=202, tags=["builds"])
async def build(
    name: ProjectName,
    body: BuildIn,
    *,
    container: ContainerDep,
    token: TokenDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Accepted:
    """Queue a build. A retry with the same ``Idempotency-Key`` (same token, same project)
    and the same body returns the task of the first request (200); the key with another
    body is a 422."""
    enqueued = await container.builds.submit(
        name, body.spec(), idempotency_key=idempotency_key, client=token.id
    )
    response.headers["Location"] = f"/tasks/{enqueued.task.id}"
    if not enqueued.created:
        response.status_code = 200
    return Accepted(task_id=enqueued.task.id, status=enqueued.task.status.value)


def _time(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


async def task_json(task: WorkTask, container: Container) -> dict[str, Any]:
    """A task as ``GET /tasks/{id}`` shows it: status, attempts, timestamps, result, callbacks."""
    view: dict[str, Any] = {
        "task_id": task.id,
        "kind": task.kind,
        "status": task.status.value,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "cancel_requested": task.cancel_requested,
        "worker": task.worker,
        "created_at": _time(task.created_at),
        "started_at": _time(task.started_at),
        "finished_at": _time(task.finished_at),
        "updated_at": _time(task.updated_at),
        "last_error": task.last_error,
        "result": shown(task.result),
    }
    if task.kind == "build":
        request = BuildRequest.from_task(task)
        spec = request.spec.to_payload()
        if spec.get("callback_url"):
            from forgeline.domain.callbacks import display_url

            spec["callback_url"] = display_url(spec["callback_url"])
        view["project_id"] = request.project
        spec["variables"] = shown(spec["variables"])
        view["spec"] = spec
        deliveries = await container.callbacks.outbox.list_for_task(task.id)
        view["callbacks"] = [d.as_public() for d in deliveries]
    return container.redactor.redact_obj(view)  # type: ignore[no-any-return]


@router.get("/tasks/{task_id}", tags=["builds"])
async def show_task(task_id: TaskId, container: ContainerDep, _token: TokenDep) -> dict[str, Any]:
    """Status, attempts, timestamps, result and callback deliveries of a task."""
    return await task_json(await container.builds.get(task_id), container)


@router.post("/tasks/{task_id}/cancel", tags=["builds"])
async def cancel_task(task_id: TaskId, container: ContainerDep, _token: TokenDep) -> dict[str, Any]:
    """Cancel a queued task now, or ask the worker of a running one to stop (409 if final)."""
    return await task_json(await container.builds.cancel(task_id), container)


@router.get("/tasks/{task_id}/events", tags=["builds"], response_model=None)
async def task_events(
    task_id: TaskId,
    container: ContainerDep,
    _token: Annotated[ApiToken, Depends(authenticated_or_session)],
    format: Annotated[Literal["sse", "json"], Query()] = "sse",  # noqa: A002 - the public name
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    """The task's normalized events: an SSE stream (``id:`` = seq, resumable with
    ``Last-Event-ID``) that ends after the ``result``; or, with ``?format=json``, the
    events so far as one JSON array. Positions (``after``, ``Last-Event-ID``) are decimal
    integers in ``[0, 2**63 - 1]``; others are a 422."""
    start = max(after, _resume_position(last_event_id))
    await container.builds.get(task_id)  # 404 for an unknown task
    if format == "json":
        events = await _all_events(container, task_id, start)
        body = "[" + ",".join(e.body for e in events) + "]"
        return Response(content=body, media_type="application/json")
    return StreamingResponse(
        _sse(container.events.stream(task_id, start)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


#: An event position as a client may send it: ASCII digits (``str.isdigit`` and ``int``
#: accept other scripts' digits too, and ``int`` not all of those).
_POSITION = re.compile(r"[0-9]{1,19}")


def _resume_position(last_event_id: str | None) -> int:
    """The position in a ``Last-Event-ID`` header (0 when absent or blank)."""
    text = (last_event_id or "").strip()
    if not text:
        return 0
    if not _POSITION.fullmatch(text) or int(text) > MAX_SEQ:
        raise ValidationError(
            f"{text[:40]!r} is not an event position (a decimal integer up to {MAX_SEQ})",
            field="Last-Event-ID",
        )
    return int(text)


async def _all_events(container: Container, task_id: str, after: int) -> list[Any]:
    events: list[Any] = []
    while True:
        page = await container.store.list_events(task_id, after_seq=after, limit=1000)
        events.extend(page)
        if len(page) < 1000:
            return events
        after = page[-1].seq


async def _sse(stream: AsyncGenerator[StreamItem, None]) -> AsyncIterator[bytes]:
    """The event hub's stream as SSE: ``id:`` = seq, ``data:`` = the event; a comment as
    keep-alive; a ``dropped`` message (no ``id``: the position stays the last event's)
    before the end when the client reads too slowly, which it resumes by reconnecting."""
    async with contextlib.aclosing(stream):
        async for item in stream:
            if isinstance(item, KeepAlive):
                yield b": keep-alive\n\n"
            elif isinstance(item, Dropped):
                data = json.dumps({"reason": "too slow", "position": item.position})
                yield f"event: dropped\ndata: {data}\n\n".encode()
            else:
                yield "".join(
                    f"id: {e.seq}\nevent: {e.type}\ndata: {e.body}\n\n" for e in item
                ).encode()


# --- agents and templates --------------------------------------------------------------------


@router.get("/agents", tags=["agents"])
async def agents(container: ContainerDep, _token: TokenDep) -> list[dict[str, Any]]:
    """Agent providers with capabilities and availability (the default first)."""
    return await describe_agents(container.registry)


@router.get("/templates", tags=["projects"])
async def templates(container: ContainerDep, _token: TokenDep) -> list[dict[str, Any]]:
    """Project templates with their variables."""
    listed = await asyncio.to_thread(container.templates.list_templates)
    return [t.to_dict() for t in listed]


# --- credentials -----------------------------------------------------------------------------


class CredentialIn(BaseModel):
    """``PUT /credentials/{name}``: the value (never returned by any route)."""

    model_config = ConfigDict(extra="forbid")

    value: SecretValue


@router.put("/credentials/{name}", tags=["credentials"])
async def put_credential(
    name: str,
    body: CredentialIn,
    container: ContainerDep,
    _token: AdminDep,
    project: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    """Create or replace a credential (global, or of ``?project=``)."""
    info = await container.credential_admin.set(name, body.value, project=project)
    return info.to_dict()


@router.get("/credentials", tags=["credentials"])
async def list_credentials(
    container: ContainerDep,
    _token: AdminDep,
    project: Annotated[str | None, Query()] = None,
) -> list[dict[str, Any]]:
    """Credential names, scopes and times; never values."""
    return [c.to_dict() for c in await container.credential_admin.list(project=project)]


@router.delete("/credentials/{name}", status_code=204, tags=["credentials"])
async def delete_credential(
    name: str,
    container: ContainerDep,
    _token: AdminDep,
    project: Annotated[str | None, Query()] = None,
) -> Response:
    """Remove a credential of exactly this scope."""
    await container.credential_admin.delete(name, project=project)
    return Response(status_code=204)


# --- health and metrics (no auth) ------------------------------------------------------------

health = APIRouter(tags=["health"])


@health.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@health.get("/readyz", response_model=None)
async def readyz(container: ContainerDep) -> JSONResponse | dict[str, str]:
    """Readiness: the database is reachable."""
    try:
        await container.ping_database()
    except StorageError as exc:
        return JSONResponse(status_code=503, content=error_body(exc.code, exc.message))
    return {"status": "ready"}


@health.get("/metrics")
async def metrics(container: ContainerDep) -> Response:
    """Prometheus metrics: builds by status, queue depth, durations, cost, callbacks."""
    return Response(
        content=await container.metrics.render(),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )
