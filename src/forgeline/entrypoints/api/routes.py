"""The routes of DESIGN.md. Handlers translate HTTP to service calls and nothing else; the
models they take and give are in :mod:`forgeline.entrypoints.api.schemas`.

Every route documents each status it can answer with (errors with the one envelope), its
``operationId`` and, but for the health routes, the bearer token it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncGenerator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from forgeline.bootstrap import Container
from forgeline.domain.agent import MAX_SEQ
from forgeline.domain.errors import (
    InvalidProjectNameError,
    ProjectNotFoundError,
    StorageError,
    TaskNotFoundError,
    ValidationError,
)
from forgeline.domain.inputs import check_timestamp, decimal_pattern
from forgeline.domain.project import MAX_PROJECT_NAME, PROJECT_NAME_PATTERN, validate_project_name
from forgeline.domain.secrets import CREDENTIAL_NAME_PATTERN
from forgeline.domain.task import TaskStatus, WorkTask
from forgeline.entrypoints.api.errors import STORAGE_RETRY_AFTER_S, error_body, errors
from forgeline.entrypoints.api.fields import (
    MAX_CREDENTIAL_NAME,
    TASK_ID_PATTERN,
    TOKEN_ID_PATTERN,
    anchored,
)
from forgeline.entrypoints.api.schemas import (
    Accepted,
    AgentOut,
    BuildIn,
    CredentialIn,
    CredentialOut,
    EventOut,
    Health,
    ProjectDeleted,
    ProjectIn,
    ProjectOut,
    ProjectPage,
    ProjectPatch,
    Readiness,
    TaskOut,
    TaskPage,
    TemplateOut,
    TokenOut,
)
from forgeline.entrypoints.api.streaming import EventStream
from forgeline.ports.queue import Enqueued
from forgeline.ports.store import ApiToken
from forgeline.services.auth import AuthService, Role
from forgeline.services.events import Dropped, KeepAlive, StreamItem
from forgeline.services.projects import UNSET, ProjectChanges
from forgeline.services.registry import describe_agents
from forgeline.services.sessions import SESSION_COOKIE

#: What ``Last-Event-ID`` may hold: an event position, or nothing (from the start).
_POSITION_HEADER = rf"^\s*(?:{decimal_pattern(MAX_SEQ)})?\s*$"
#: One message of an event stream (OpenAPI 3.2's ``itemSchema`` of ``text/event-stream``):
#: an event (``id:`` the seq, ``event:`` its type, ``data:`` the event as JSON), or the
#: ``dropped`` message that ends the stream of a client reading too slowly (see _sse).
_SSE_MESSAGE = {
    "oneOf": [
        {
            "type": "object",
            "required": ["id", "event", "data"],
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "event": {"type": "string", "not": {"const": "dropped"}},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": "#/components/schemas/EventOut"},
                },
            },
        },
        {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"const": "dropped"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "type": "object",
                        "required": ["reason", "position"],
                        "properties": {
                            "reason": {"type": "string"},
                            "position": {"type": "integer", "minimum": 0},
                        },
                    },
                },
            },
        },
    ]
}
#: Page sizes of the list routes.
DEFAULT_PAGE, MAX_PAGE = 50, 200

#: The ``Authorization: Bearer <token>`` scheme (the document's ``securitySchemes``); the
#: header is read and checked by :class:`AuthService`, whose errors say what is wrong.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="an API token (`forgeline token create`)",
)


def container_of(request: Request) -> Container:
    """The container built by the app's lifespan."""
    built: Container = request.app.state.container
    return built


ContainerDep = Annotated[Container, Depends(container_of)]


async def authenticated(
    request: Request,
    container: ContainerDep,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiToken:
    """The caller's token (401 without a valid one)."""
    return await container.auth.authenticate(request.headers.get("authorization"))


TokenDep = Annotated[ApiToken, Depends(authenticated)]

#: The dashboard's session cookie, which the event stream takes too (see
#: :func:`authenticated_or_session`).
session_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    scheme_name="session",
    description="a dashboard session (`/ui/login`); read-only routes for browsers only",
)


async def authenticated_or_session(
    request: Request,
    container: ContainerDep,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    cookie: Annotated[str | None, Depends(session_cookie)],
) -> ApiToken:
    """The caller's token, from its Authorization header or else from the dashboard's
    session cookie: a browser's ``EventSource`` cannot send headers. Only read-only routes
    take it (a cookie rides along on cross-site requests that only ``SameSite`` stops)."""
    authorization = request.headers.get("authorization")
    if authorization is None and cookie:
        return await container.sessions.check(cookie)
    return await container.auth.authenticate(authorization)


async def admin(token: TokenDep) -> ApiToken:
    """The caller's token if it may administer forgeline (403 otherwise)."""
    AuthService.require(token, Role.ADMIN)
    return token


AdminDep = Annotated[ApiToken, Depends(admin)]


def project_name(
    name: Annotated[
        str,
        Path(
            json_schema_extra={
                "pattern": anchored(PROJECT_NAME_PATTERN),
                "maxLength": MAX_PROJECT_NAME,
            }
        ),
    ],
) -> str:
    """The project name in the path; 404 at once for a name no project can have, so that
    garbage (a NUL byte, which PostgreSQL refuses in text) never reaches the database."""
    try:
        return validate_project_name(name)
    except InvalidProjectNameError:
        raise ProjectNotFoundError(name) from None


#: What a task id looks like; anything else is no task's.
_TASK_ID = re.compile(TASK_ID_PATTERN)


def task_id_of(
    task_id: Annotated[str, Path(json_schema_extra={"pattern": TASK_ID_PATTERN})],
) -> str:
    """The task id in the path; 404 at once for one no task can have, for the same reason."""
    if not _TASK_ID.match(task_id):
        raise TaskNotFoundError(task_id)
    return task_id


ProjectName = Annotated[str, Depends(project_name)]
TaskId = Annotated[str, Depends(task_id_of)]
CredentialName = Annotated[
    str,
    Path(
        max_length=MAX_CREDENTIAL_NAME,
        json_schema_extra={"pattern": anchored(CREDENTIAL_NAME_PATTERN)},
    ),
]
ScopeQuery = Annotated[
    str | None,
    Query(
        max_length=MAX_PROJECT_NAME,
        json_schema_extra={"pattern": anchored(PROJECT_NAME_PATTERN)},
        description="a project's own scope (default: the global one)",
    ),
]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="the page size")]
IdempotencyKey = Annotated[
    str,
    Header(
        max_length=200,
        description="the same key (and body) again returns the first request's task (200)",
    ),
]

router = APIRouter()


def _created(response: Response, location: str, enqueued: Enqueued) -> Accepted:
    """A queued build's answer: 202 and its ``Location``, or 200 for a replayed key."""
    response.headers["Location"] = location
    if not enqueued.created:
        response.status_code = 200
    return Accepted(task_id=enqueued.task.id, status=enqueued.task.status)


def _accepted_responses() -> dict[int | str, dict[str, Any]]:
    return {
        200: {"model": Accepted, "description": "the task an Idempotency-Key made before"},
        202: {
            "description": "queued",
            "headers": {
                "Location": {"description": "the task", "schema": {"type": "string"}},
            },
        },
    }


# --- projects --------------------------------------------------------------------------------


@router.post(
    "/projects",
    status_code=201,
    tags=["projects"],
    operation_id="createProject",
    response_model=ProjectOut,
    responses={
        200: {"model": ProjectOut, "description": "a project left creating, now finished"},
        201: {
            "description": "created",
            "headers": {"Location": {"description": "the project", "schema": {"type": "string"}}},
        },
        **errors(400, 401, 403, 409, 413, 415, 422, 424, 500, 503),
    },
)
async def create_project(
    body: ProjectIn, container: ContainerDep, _token: AdminDep, response: Response
) -> ProjectOut:
    """Create a project (from a template when named); 409 if a ready one has the name."""
    project, created = await container.projects.create(
        body.name,
        template=body.template,
        variables=body.variables,
        repo_url=body.repo_url,
        credentials=body.credentials,
        settings=body.settings,
    )
    response.headers["Location"] = f"/projects/{project.name}"
    if not created:
        response.status_code = 200
    return ProjectOut.of(project)


@router.get(
    "/projects",
    tags=["projects"],
    operation_id="listProjects",
    responses=errors(401, 422, 500, 503),
)
async def list_projects(
    container: ContainerDep,
    token: TokenDep,
    limit: Limit = DEFAULT_PAGE,
    cursor: Annotated[
        str | None,
        Query(max_length=MAX_PROJECT_NAME, description="the next_cursor of the page before"),
    ] = None,
) -> ProjectPage:
    """Projects by name, a page at a time (a limited token sees its projects only)."""
    projects, after = await container.projects.list(
        projects=token.projects, limit=limit, cursor=cursor
    )
    return ProjectPage(items=[ProjectOut.of(p) for p in projects], next_cursor=after)


@router.get(
    "/projects/{name}",
    tags=["projects"],
    operation_id="getProject",
    responses=errors(401, 403, 404, 500, 503),
)
async def show_project(name: ProjectName, container: ContainerDep, token: TokenDep) -> ProjectOut:
    """One project."""
    AuthService.require_project(token, name)
    return ProjectOut.of(await container.projects.get(name))


@router.patch(
    "/projects/{name}",
    tags=["projects"],
    operation_id="updateProject",
    responses=errors(400, 401, 403, 404, 413, 415, 422, 500, 503),
)
async def update_project(
    name: ProjectName, body: ProjectPatch, container: ContainerDep, _token: AdminDep
) -> ProjectOut:
    """Change a project's credential mapping, settings, default provider or model."""
    sent = body.model_fields_set
    changes = ProjectChanges(
        credentials=body.credentials,
        settings=body.settings,
        default_provider=body.default_provider if "default_provider" in sent else UNSET,
        default_model=body.default_model if "default_model" in sent else UNSET,
    )
    return ProjectOut.of(await container.projects.update(name, changes))


@router.delete(
    "/projects/{name}",
    tags=["projects"],
    operation_id="deleteProject",
    responses=errors(401, 403, 404, 409, 500, 503),
)
async def delete_project(
    name: ProjectName, container: ContainerDep, _token: AdminDep
) -> ProjectDeleted:
    """Delete a project: its record, its own credentials and its recorded agent sessions.
    Its repository stays where it is, and its tasks with their events. Refused (409) while
    a build of it is queued or running."""
    deletion = await container.projects.delete(name)
    return ProjectDeleted(name=name, removed=list(deletion.removed), kept=list(deletion.kept))


# --- builds and tasks ------------------------------------------------------------------------


@router.post(
    "/project/{name}/build",
    status_code=202,
    tags=["builds"],
    operation_id="createBuild",
    responses={
        **_accepted_responses(),
        **errors(400, 401, 403, 404, 409, 413, 415, 422, 424, 429, 500, 503),
    },
)
async def build(
    name: ProjectName,
    body: BuildIn,
    *,
    container: ContainerDep,
    token: TokenDep,
    response: Response,
    idempotency_key: IdempotencyKey = "",
) -> Accepted:
    """Queue a build. A retry with the same ``Idempotency-Key`` (same token, same project)
    and the same body returns the task of the first request (200); the key with another
    body is a 422."""
    AuthService.require_project(token, name)
    enqueued = await container.builds.submit(
        name, body.spec(), idempotency_key=idempotency_key, client=token.id
    )
    return _created(response, f"/tasks/{enqueued.task.id}", enqueued)


@router.get(
    "/tasks",
    tags=["tasks"],
    operation_id="listTasks",
    responses=errors(401, 403, 422, 500, 503),
)
async def list_tasks(
    *,
    container: ContainerDep,
    token: TokenDep,
    project: Annotated[
        str | None,
        Query(
            max_length=MAX_PROJECT_NAME,
            json_schema_extra={"pattern": anchored(PROJECT_NAME_PATTERN)},
            description="only this project's builds",
        ),
    ] = None,
    status: Annotated[TaskStatus | None, Query(description="only tasks in this status")] = None,
    since: Annotated[
        str | None,
        Query(
            json_schema_extra={"format": "date-time"},
            description="only tasks created at or after this time (RFC 3339)",
        ),
    ] = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: Annotated[
        str | None,
        Query(pattern="^[0-9]{1,18}$", description="the next_cursor of the page before"),
    ] = None,
) -> TaskPage:
    """Build tasks, newest first, a page at a time (a limited token sees its projects'
    only)."""
    projects = token.projects
    if project is not None:
        validate_project_name(project)
        AuthService.require_project(token, project)
        projects = (project,)
    tasks, after = await container.builds.list(
        projects=projects,
        status=status,
        since=None if since is None else check_timestamp(since, field="since"),
        limit=limit,
        cursor=None if cursor is None else int(cursor),
    )
    redact = container.redactor.redact_obj
    return TaskPage(
        items=[TaskOut.of(task, redact=redact) for task in tasks],
        next_cursor=None if after is None else str(after),
    )


@router.get(
    "/tasks/{task_id}",
    tags=["tasks"],
    operation_id="getTask",
    responses=errors(401, 404, 500, 503),
)
async def show_task(task_id: TaskId, container: ContainerDep, token: TokenDep) -> TaskOut:
    """Status, attempts, timestamps, result and callback deliveries of a task."""
    return await task_view(container, await container.builds.get(task_id, projects=token.projects))


async def task_view(container: Container, task: WorkTask) -> TaskOut:
    """``task`` as ``GET /tasks/{id}`` shows it, with its callback deliveries (and as the
    dashboard's build page does)."""
    deliveries = await container.callbacks.deliveries(task.id)
    return TaskOut.of(task, redact=container.redactor.redact_obj, deliveries=deliveries)


@router.post(
    "/tasks/{task_id}/cancel",
    tags=["tasks"],
    operation_id="cancelTask",
    responses=errors(401, 404, 409, 500, 503),
)
async def cancel_task(task_id: TaskId, container: ContainerDep, token: TokenDep) -> TaskOut:
    """Cancel a queued task now, or ask the worker of a running one to stop (409 if final)."""
    task = await container.builds.cancel(task_id, projects=token.projects)
    return TaskOut.of(task, redact=container.redactor.redact_obj)


@router.post(
    "/tasks/{task_id}/retry",
    status_code=202,
    tags=["tasks"],
    operation_id="retryTask",
    responses={
        **_accepted_responses(),
        **errors(401, 404, 409, 422, 424, 429, 500, 503),
    },
)
async def retry_task(
    task_id: TaskId,
    container: ContainerDep,
    token: TokenDep,
    response: Response,
    idempotency_key: IdempotencyKey = "",
) -> Accepted:
    """Queue a new build with the spec of a finished one (its ``retry_of``); 409 while the
    build is queued or running. Checked as a new build request is (422, 424, 429)."""
    enqueued = await container.builds.retry(
        task_id, projects=token.projects, idempotency_key=idempotency_key, client=token.id
    )
    return _created(response, f"/tasks/{enqueued.task.id}", enqueued)


@router.get(
    "/tasks/{task_id}/diff",
    tags=["tasks"],
    operation_id="getTaskDiff",
    response_class=Response,
    responses={
        200: {
            "description": "the patch of the commit the build pushed, read from the"
            " project's remote (`git apply`-able but for binary files)",
            "content": {"text/x-diff": {"schema": {"type": "string"}}},
        },
        **errors(401, 404, 424, 500, 503),
    },
)
async def task_diff(task_id: TaskId, container: ContainerDep, token: TokenDep) -> Response:
    """The patch of the commit a finished build pushed; 404 when it pushed none."""
    return Response(
        content=await pushed_patch(container, task_id, token),
        media_type="text/x-diff; charset=utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def pushed_patch(container: Container, task_id: str, token: ApiToken) -> str:
    """The patch of the commit the finished build ``task_id`` pushed, redacted, if
    ``token`` may see it (``NoCommitError`` when it pushed none): the API's diff and the
    dashboard's."""
    project, sha = await container.builds.pushed_commit(task_id, projects=token.projects)
    return container.redactor.redact(await container.projects.commit_patch(project, sha))


@router.get(
    "/tasks/{task_id}/log",
    tags=["tasks"],
    operation_id="getTaskLog",
    response_class=Response,
    responses={
        200: {
            "description": "the task's events so far as plain text, one line each",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **errors(401, 404, 500, 503),
    },
)
async def task_log(task_id: TaskId, container: ContainerDep, token: TokenDep) -> Response:
    """A plain-text transcript of the task's events (stored redacted)."""
    text = await container.builds.transcript(task_id, projects=token.projects)
    return Response(
        content=text,
        media_type="text/plain; charset=utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


@router.get(
    "/tasks/{task_id}/events",
    tags=["tasks"],
    operation_id="getTaskEvents",
    response_model=None,
    responses={
        200: {
            "model": list[EventOut],
            "description": "an SSE stream of events (`id:` seq, `event:` type, `data:` the"
            " event) ending after the `result`, with `: keep-alive` comments while quiet and a"
            " `dropped` message ending it early for a client that reads too slowly (resume"
            " with `Last-Event-ID`); or, with `?format=json`, the events so far",
            "content": {
                "text/event-stream": {"itemSchema": _SSE_MESSAGE},
            },
        },
        **errors(401, 404, 422, 500, 503),
    },
)
async def task_events(
    task_id: TaskId,
    *,
    container: ContainerDep,
    token: Annotated[ApiToken, Depends(authenticated_or_session)],
    format: Annotated[Literal["sse", "json"], Query()] = "sse",  # noqa: A002 - the public name
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    last_event_id: Annotated[str, Header(json_schema_extra={"pattern": _POSITION_HEADER})] = "",
) -> Response:
    """The task's normalized events: an SSE stream (``id:`` = seq, resumable with
    ``Last-Event-ID``) that ends after the ``result``; or, with ``?format=json``, the
    events so far as one JSON array. Positions (``after``, ``Last-Event-ID``) are decimal
    integers in ``[0, 2**63 - 1]``; others are a 422."""
    start = max(after, _resume_position(last_event_id))
    await container.builds.get(task_id, projects=token.projects)  # 404 for an unknown task
    if format == "json":
        events = await container.builds.events(task_id, after=start)
        body = "[" + ",".join(e.body for e in events) + "]"
        return Response(content=body, media_type="application/json")
    return EventStream(
        _sse(container.events.stream(task_id, start)),
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


async def _sse(stream: AsyncGenerator[StreamItem, None]) -> AsyncGenerator[bytes, None]:
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


@router.get(
    "/agents",
    tags=["agents"],
    operation_id="listAgents",
    responses=errors(401, 500, 503),
)
async def agents(container: ContainerDep, _token: TokenDep) -> list[AgentOut]:
    """Agent providers with capabilities and availability (the default first)."""
    return [AgentOut.model_validate(a) for a in await describe_agents(container.registry)]


@router.get(
    "/templates",
    tags=["projects"],
    operation_id="listTemplates",
    responses=errors(401, 500, 503),
)
async def templates(container: ContainerDep, _token: TokenDep) -> list[TemplateOut]:
    """Project templates with their variables."""
    listed = await asyncio.to_thread(container.templates.list_templates)
    return [TemplateOut.of(t) for t in listed]


# --- credentials -----------------------------------------------------------------------------


@router.put(
    "/credentials/{name}",
    tags=["credentials"],
    operation_id="putCredential",
    responses=errors(400, 401, 403, 404, 413, 415, 422, 500, 503),
)
async def put_credential(
    name: CredentialName,
    body: CredentialIn,
    container: ContainerDep,
    _token: AdminDep,
    project: ScopeQuery = None,
) -> CredentialOut:
    """Create or replace a credential (global, or of ``?project=``, which must exist)."""
    info = await container.credential_admin.set(name, body.value, project=project)
    return CredentialOut.of(info)


@router.get(
    "/credentials",
    tags=["credentials"],
    operation_id="listCredentials",
    responses=errors(401, 403, 422, 500, 503),
)
async def list_credentials(
    container: ContainerDep, _token: AdminDep, project: ScopeQuery = None
) -> list[CredentialOut]:
    """Credential names, scopes and times; never values. With ``?project=``: those its
    builds can receive (its own, and the global ones it does not override)."""
    return [CredentialOut.of(c) for c in await container.credential_admin.list(project=project)]


@router.delete(
    "/credentials/{name}",
    status_code=204,
    tags=["credentials"],
    operation_id="deleteCredential",
    responses=errors(401, 403, 404, 422, 500, 503),
)
async def delete_credential(
    name: CredentialName, container: ContainerDep, _token: AdminDep, project: ScopeQuery = None
) -> Response:
    """Remove a credential of exactly this scope."""
    await container.credential_admin.delete(name, project=project)
    return Response(status_code=204)


# --- tokens ----------------------------------------------------------------------------------


@router.get(
    "/tokens",
    tags=["tokens"],
    operation_id="listTokens",
    responses=errors(401, 403, 500, 503),
)
async def list_tokens(container: ContainerDep, _token: AdminDep) -> list[TokenOut]:
    """Every API token: name, role, projects, created, last used; never the token."""
    return [TokenOut.of(t) for t in await container.auth.list()]


@router.delete(
    "/tokens/{token_id}",
    status_code=204,
    tags=["tokens"],
    operation_id="revokeToken",
    responses=errors(401, 403, 404, 409, 500, 503),
)
async def revoke_token(
    token_id: Annotated[str, Path(json_schema_extra={"pattern": TOKEN_ID_PATTERN})],
    container: ContainerDep,
    token: AdminDep,
) -> Response:
    """Revoke a token: from now on it is refused (401). A token cannot revoke itself (409)."""
    await container.auth.revoke(token_id, by=token)
    return Response(status_code=204)


# --- health and metrics (no auth) ------------------------------------------------------------

health = APIRouter(tags=["health"])


@health.get("/healthz", operation_id="getHealth")
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@health.get(
    "/readyz",
    operation_id="getReadiness",
    response_model=Readiness,
    responses=errors(503),
)
async def readyz(container: ContainerDep) -> JSONResponse | Readiness:
    """Readiness: the database is reachable."""
    try:
        await container.ping_database()
    except StorageError as exc:
        return JSONResponse(
            status_code=503,
            content=error_body(exc.code, exc.message, retry_after_s=STORAGE_RETRY_AFTER_S),
            headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)},
        )
    return Readiness(status="ready")


@health.get(
    "/metrics",
    operation_id="getMetrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format 0.0.4",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **errors(500, 503),
    },
)
async def metrics(container: ContainerDep) -> Response:
    """Prometheus metrics: HTTP requests, builds and their steps by provider, queue depth,
    cost, callbacks."""
    return Response(
        content=await container.metrics.render(),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )
