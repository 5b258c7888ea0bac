"""The dashboard's pages and forms (DESIGN.md: ``/ui/…``). Like the API's handlers, they
translate HTTP to service calls; requests are checked with the API's own models, tasks
shown through the API's own view of them, so both say the same."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.responses import RedirectResponse

from forgeline.domain.build import BuildResult
from forgeline.domain.errors import AuthError, ForgelineError, ValidationError
from forgeline.domain.project import Project
from forgeline.domain.task import TaskStatus, WorkTask
from forgeline.entrypoints.api.routes import project_name, pushed_patch, task_id_of, task_view
from forgeline.entrypoints.api.schemas import BuildIn, CredentialIn, ProjectIn
from forgeline.entrypoints.ui.diff import parse_patch
from forgeline.entrypoints.ui.web import (
    CSRF_COOKIE,
    PREFIX,
    Admin,
    ContainerDep,
    PageRoute,
    Viewer,
    csrf_guard,
    render,
    set_csrf_cookie,
)
from forgeline.logs import Redactor
from forgeline.ports.store import ApiToken
from forgeline.services.auth import AuthService, Role
from forgeline.services.builds import BuildRequest
from forgeline.services.registry import describe_agents
from forgeline.services.sessions import SESSION_COOKIE

#: Builds shown per page (overview and project pages).
PAGE = 30
#: Projects the overview shows at most.
PROJECTS_SHOWN = 200

ui = APIRouter(
    prefix=PREFIX,
    route_class=PageRoute,
    dependencies=[Depends(csrf_guard)],
    include_in_schema=False,
)
root = APIRouter(include_in_schema=False)

ProjectName = Annotated[str, Depends(project_name)]
TaskId = Annotated[str, Depends(task_id_of)]
#: A form field (an absent one is empty: the service or the API's model says what is wrong).
Field = Annotated[str, Form()]


@root.get("/")
async def home() -> RedirectResponse:
    """The dashboard is forgeline's home page."""
    return RedirectResponse(f"{PREFIX}/", status_code=307)


def _see(path: str) -> RedirectResponse:
    """After a form: the page that shows its effect (303, so a reload does not resend it)."""
    return RedirectResponse(f"{PREFIX}{path}", status_code=303)


# --- signing in and out -----------------------------------------------------------------------


@ui.get("/login")
async def login_form(request: Request) -> Response:
    """The sign-in form: an API token."""
    return render(request, "login.html", error=None)


@ui.post("/login")
async def login(request: Request, container: ContainerDep, token: Field = "") -> Response:
    """Open a session for a valid token; the form again, with a 401, for any other."""
    try:
        _record, cookie = await container.sessions.open(token)
    except AuthError:
        return render(request, "login.html", status_code=401, error="unknown or revoked API token")
    response = _see("/")
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=container.sessions.ttl_s,
        path="/",  # the API's event stream reads it too (an EventSource sends no header)
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    # The pre-sign-in binding is spent: forms are bound to the session from now on.
    response.delete_cookie(CSRF_COOKIE, path=PREFIX)
    return response


@ui.post("/logout")
async def logout(request: Request) -> Response:
    """End this browser's session (the token itself stays valid)."""
    response = _see("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    set_csrf_cookie(request, response, secrets.token_urlsafe(32))
    return response


# --- overview and projects --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BuildRow:
    """A build as the tables show it (its texts redacted)."""

    id: str
    project: str
    status: str
    prompt: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cost_usd: float | None
    commit: str | None
    pipeline_status: str | None
    deploy_url: str | None

    @property
    def active(self) -> bool:
        """True while the build may still change."""
        return self.status in (TaskStatus.QUEUED, TaskStatus.RUNNING)

    @classmethod
    def of(cls, task: WorkTask, redactor: Redactor) -> BuildRow:
        """The row of a build task."""
        request = BuildRequest.from_task(task)
        artifacts = BuildResult.stored_artifacts(task.result)
        return cls(
            id=task.id,
            project=request.project,
            status=task.status.value,
            prompt=redactor.redact(request.spec.prompt),
            created_at=task.created_at,
            started_at=task.started_at,
            finished_at=task.finished_at,
            cost_usd=BuildResult.stored_cost(task.result),
            commit=artifacts.commit_sha,
            pipeline_status=artifacts.pipeline_status,
            deploy_url=_web_url(redactor.redact(artifacts.deploy_url or "")),
        )


def _web_url(url: str) -> str | None:
    """``url`` if a page may link to it: http(s) only (a ``javascript:`` URL in a link
    would be script, however well escaped)."""
    return url if url.lower().startswith(("https://", "http://")) else None


async def _project(container: ContainerDep, viewer: ApiToken, name: str) -> Project:
    """A project the viewer may see (403 for another, as the API answers)."""
    AuthService.require_project(viewer, name)
    return await container.projects.get(name)


@ui.get("/")
async def overview(
    request: Request,
    container: ContainerDep,
    viewer: Viewer,
    status: Annotated[TaskStatus | None, Query()] = None,
) -> Response:
    """Projects with their last build, and the newest builds of all (by ``status``)."""
    projects, more = await container.projects.list(projects=viewer.projects, limit=PROJECTS_SHOWN)
    lasts = await asyncio.gather(
        *(container.builds.list(projects=[p.name], limit=1) for p in projects)
    )
    redactor = container.redactor
    last = {
        project.name: BuildRow.of(tasks[0], redactor)
        for project, (tasks, _) in zip(projects, lasts, strict=True)
        if tasks
    }
    tasks, _ = await container.builds.list(projects=viewer.projects, status=status, limit=PAGE)
    recent = [BuildRow.of(t, redactor) for t in tasks]
    templates = (
        await asyncio.to_thread(container.templates.list_templates)
        if viewer.role == Role.ADMIN
        else []
    )
    return render(
        request,
        "overview.html",
        viewer=viewer,
        projects=projects,
        more_projects=more is not None,
        last=last,
        recent=recent,
        status=status.value if status else "",
        statuses=[s.value for s in TaskStatus],
        templates=templates,
        live=any(r.active for r in [*recent, *last.values()]),
    )


@ui.post("/projects")
async def create_project(
    container: ContainerDep,
    _admin: Admin,
    name: Field = "",
    template: Field = "",
    repo_url: Field = "",
) -> Response:
    """Create a project (checked as ``POST /projects`` is), then show it."""
    body = ProjectIn(name=name.strip(), template=template or None, repo_url=repo_url or None)
    project, _created = await container.projects.create(
        body.name, template=body.template, repo_url=body.repo_url
    )
    return _see(f"/projects/{project.name}")


@ui.get("/projects/{name}")
async def project_page(
    request: Request,
    name: ProjectName,
    container: ContainerDep,
    viewer: Viewer,
    cursor: Annotated[str | None, Query(pattern="^[0-9]{1,18}$")] = None,
) -> Response:
    """A project: its details, its builds (newest first, a page at a time), a build form."""
    project = await _project(container, viewer, name)
    tasks, next_cursor = await container.builds.list(
        projects=[name], limit=PAGE, cursor=None if cursor is None else int(cursor)
    )
    return render(
        request,
        "project.html",
        viewer=viewer,
        project=project,
        builds=[BuildRow.of(t, container.redactor) for t in tasks],
        next_cursor=next_cursor,
        providers=container.registry.names(),
        default_provider=project.default_provider or container.registry.default_name,
        # A fresh key per form shown: a double click queues one build, not two.
        idempotency_key=secrets.token_urlsafe(16),
        live=any(t.status in (TaskStatus.QUEUED, TaskStatus.RUNNING) for t in tasks),
    )


@ui.post("/projects/{name}/builds")
async def start_build(
    name: ProjectName,
    *,
    container: ContainerDep,
    viewer: Viewer,
    prompt: Field = "",
    provider: Field = "",
    model: Field = "",
    auto_deploy: Field = "",
    continue_session: Field = "",
    idempotency_key: Field = "",
) -> Response:
    """Queue a build (checked as ``POST /project/{name}/build`` is), then show it."""
    AuthService.require_project(viewer, name)
    body = BuildIn.model_validate(
        {
            "prompt": prompt,
            "provider": provider or None,
            "model": model.strip() or None,
            "auto_deploy": bool(auto_deploy),
            "continue": bool(continue_session),
        }
    )
    enqueued = await container.builds.submit(
        name, body.spec(), idempotency_key=idempotency_key[:200] or None, client=viewer.id
    )
    return _see(f"/tasks/{enqueued.task.id}")


# --- builds -----------------------------------------------------------------------------------


@ui.get("/tasks/{task_id}")
async def task_page(
    request: Request, task_id: TaskId, container: ContainerDep, viewer: Viewer
) -> Response:
    """A build: its summary, steps, live conversation, callbacks and the diff it pushed."""
    task = await container.builds.get(task_id, projects=viewer.projects)
    row = BuildRow.of(task, container.redactor)
    patch, patch_error = None, None
    if task.status.is_final and row.commit:
        try:
            patch = parse_patch(await pushed_patch(container, task_id, viewer))
        except ForgelineError as exc:
            # A remote that does not answer costs the page its diff, not the page.
            patch_error = container.redactor.redact(exc.message)
    view = await task_view(container, task)
    return render(
        request,
        "task.html",
        viewer=viewer,
        task=task,
        view=view.model_dump(mode="json", by_alias=True),
        row=row,
        patch=patch,
        patch_error=patch_error,
    )


@ui.post("/tasks/{task_id}/cancel")
async def cancel_task(task_id: TaskId, container: ContainerDep, viewer: Viewer) -> Response:
    """Cancel a queued or running build, then show it."""
    await container.builds.cancel(task_id, projects=viewer.projects)
    return _see(f"/tasks/{task_id}")


@ui.post("/tasks/{task_id}/retry")
async def retry_task(task_id: TaskId, container: ContainerDep, viewer: Viewer) -> Response:
    """Re-run a finished build, then show the new one."""
    enqueued = await container.builds.retry(task_id, projects=viewer.projects, client=viewer.id)
    return _see(f"/tasks/{enqueued.task.id}")


# --- agents and administration ----------------------------------------------------------------


@ui.get("/agents")
async def agents_page(request: Request, container: ContainerDep, viewer: Viewer) -> Response:
    """Agent providers: availability and capabilities."""
    agents = await describe_agents(container.registry)
    return render(request, "agents.html", viewer=viewer, agents=agents)


@ui.get("/admin/credentials")
async def credentials_page(request: Request, container: ContainerDep, admin: Admin) -> Response:
    """Credential names and scopes (never values), with forms to set and delete."""
    return render(
        request,
        "credentials.html",
        viewer=admin,
        credentials=await container.credential_admin.list(),
        projects=await _project_names(container),
    )


async def _project_names(container: ContainerDep) -> list[str]:
    projects, _ = await container.projects.list()
    return [p.name for p in projects]


@ui.post("/admin/credentials")
async def set_credential(
    container: ContainerDep,
    _admin: Admin,
    name: Field = "",
    value: Field = "",
    project: Field = "",
) -> Response:
    """Create or replace a credential (its value is never shown again)."""
    body = CredentialIn(value=value)
    await container.credential_admin.set(name.strip(), body.value, project=project or None)
    return _see("/admin/credentials")


@ui.post("/admin/credentials/delete")
async def delete_credential(
    container: ContainerDep, _admin: Admin, name: Field = "", project: Field = ""
) -> Response:
    """Delete a credential of exactly this scope."""
    await container.credential_admin.delete(name, project=project or None)
    return _see("/admin/credentials")


async def _tokens_page(
    request: Request, container: ContainerDep, admin: ApiToken, created: Any = None
) -> Response:
    return render(
        request,
        "tokens.html",
        viewer=admin,
        tokens=await container.auth.list(),
        roles=[r.value for r in Role],
        projects=await _project_names(container),
        created=created,
    )


@ui.get("/admin/tokens")
async def tokens_page(request: Request, container: ContainerDep, admin: Admin) -> Response:
    """API tokens (never their values) and a form to create one."""
    return await _tokens_page(request, container, admin)


@ui.post("/admin/tokens")
async def create_token(
    request: Request,
    *,
    container: ContainerDep,
    admin: Admin,
    name: Field = "",
    role: Field = Role.BUILDER.value,
    projects: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """Create a token (a builder one limited to ``projects`` when any are chosen) and show
    its value, this once (the page is not cached)."""
    if role not in {r.value for r in Role}:
        raise ValidationError(f"{role[:40]!r} is not a role", field="role")
    new = await container.auth.create(name, Role(role), projects or None)
    return await _tokens_page(request, container, admin, created=new)


@ui.post("/admin/tokens/{token_id}/revoke")
async def revoke_token(token_id: str, container: ContainerDep, admin: Admin) -> Response:
    """Revoke a token: its sessions and requests are refused from now on."""
    await container.auth.revoke(token_id, by=admin)
    return _see("/admin/tokens")
