"""ProjectService: create a project (repository, template, CI) in steps a retry can resume;
list, update and delete projects; read the patch of a commit from a project's remote.

A project is stored first in state ``creating``; each later step is idempotent (bare
repository, initial commit, CI activation, secrets), and only the last one marks it
``ready``. A failure part-way leaves a ``creating`` project with the error recorded in its
settings; asking to create it again carries on from where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import shutil
import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from forgeline.domain.errors import (
    ConflictError,
    CredentialNotFoundError,
    ForgelineError,
    GitError,
    ProjectExistsError,
    RemoteUnavailableError,
    TemplateNotFoundError,
    UnknownProviderError,
    ValidationError,
)
from forgeline.domain.git import GitAuthor, GitRemote, RemoteKind, classify_remote
from forgeline.domain.project import Project, validate_project_name
from forgeline.domain.secrets import Secret, validate_credential_mapping
from forgeline.domain.task import TaskStatus
from forgeline.ports.ci import CIProvider
from forgeline.ports.credentials import CredentialStore
from forgeline.ports.git import Git
from forgeline.ports.queue import WorkQueue
from forgeline.ports.store import Store
from forgeline.ports.templates import TemplateProvider
from forgeline.services.registry import ProviderRegistry

log = structlog.get_logger("forgeline.projects")

CREATING = "creating"
READY = "ready"


@dataclass(frozen=True, slots=True)
class ProjectConfig:
    """Where projects live and who commits for forgeline."""

    git_base_url: str
    scratch_dir: Path
    author: GitAuthor
    git_token_credential: str = "git-token"  # noqa: S105 - a credential name


#: Unset: a field a project update leaves as it is.
UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class ProjectChanges:
    """What ``PATCH /projects/{name}`` changes. ``credentials`` and ``settings`` are merged
    into the stored ones key by key (a ``None`` value removes its key);
    ``default_provider`` and ``default_model`` replace theirs (``None`` clears them);
    :data:`UNSET` leaves a field alone."""

    credentials: Mapping[str, str | None] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    default_provider: str | None = UNSET
    default_model: str | None = UNSET


@dataclass(frozen=True, slots=True)
class Deletion:
    """What deleting a project removed and what it left in place, as sentences."""

    removed: tuple[str, ...]
    kept: tuple[str, ...]


class ProjectService:
    """Creates, lists, shows, updates and deletes projects."""

    def __init__(
        self,
        config: ProjectConfig,
        *,
        store: Store,
        git: Git,
        templates: TemplateProvider | None = None,
        ci: CIProvider | None = None,
        credentials: CredentialStore | None = None,
        queue: WorkQueue | None = None,
        registry: ProviderRegistry | None = None,
    ) -> None:
        self.config = config
        self._store = store
        self._git = git
        self._templates = templates
        self._ci = ci
        self._credentials = credentials
        self._queue = queue
        self._registry = registry
        self._locks: dict[str, asyncio.Lock] = {}

    def embedded(self, repo_url: str) -> bool:
        """True when ``repo_url`` is a bare repository on forgeline's own disk."""
        return "://" not in repo_url and repo_url.startswith("/")

    def default_repo_url(self, name: str) -> str:
        """``<git base>/<name>.git``: a path (embedded) or a URL under a forge."""
        return f"{self.config.git_base_url.rstrip('/')}/{name}.git"

    async def list(
        self,
        *,
        projects: Collection[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> tuple[list[Project], str | None]:
        """Projects by name (only ``projects`` when given), at most ``limit`` after the
        name ``cursor``; and the cursor of the next page (``None`` after the last)."""
        page = await self._store.list_projects(
            after=cursor, limit=None if limit is None else limit + 1, names=projects
        )
        if limit is None or len(page) <= limit:
            return page, None
        return page[:limit], page[limit - 1].name

    async def get(self, name: str) -> Project:
        """One project, or ``ProjectNotFoundError``."""
        return await self._store.get_project(name)

    async def create(
        self,
        name: str,
        *,
        template: str | None = None,
        variables: Mapping[str, Any] | None = None,
        repo_url: str | None = None,
        credentials: Mapping[str, str] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> tuple[Project, bool]:
        """Create ``name`` (or finish creating it); returns the project and whether this
        call created it.

        Everything that can be checked is checked before anything is stored
        (``ValidationError``, 422: the name, the template and its variables, the remote URL,
        the credential mapping's names); a remote that cannot be reached or refuses is a
        ``RemoteUnavailableError`` (424), after which the project waits in ``creating``
        for a retry. ``ProjectExistsError`` when a ready project has that name.
        """
        validate_project_name(name)
        variables = dict(variables or {})
        if template is not None:
            if self._templates is None:
                raise ForgelineError("templates are not available in this process")
            try:
                variables = await asyncio.to_thread(
                    self._templates.validate, template, variables, project_name=name
                )
            except TemplateNotFoundError as exc:
                raise ValidationError(exc.message, field="template") from exc
        url = self._check_repo_url(repo_url or self.default_repo_url(name))
        mapping = _check_credentials(credentials or {})
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            created = True
            try:
                project = await self._store.create_project(
                    Project(
                        name=name,
                        repo_url=url,
                        template=template,
                        variables=variables,
                        credentials=mapping,
                        settings=dict(settings or {}),
                        state=CREATING,
                    )
                )
            except ProjectExistsError:
                project = await self._store.get_project(name)
                if project.state == READY:
                    raise
                created = False
                log.info("project.resume_creation", project=name)
            try:
                project = await self._provision(project)
            except ForgelineError as exc:
                failed = replace(
                    project, settings={**project.settings, "creation_error": exc.message}
                )
                await self._store.update_project(failed)
                raise
            return project, created

    async def update(self, name: str, changes: ProjectChanges) -> Project:
        """Apply ``changes`` to ``name``. ``ValidationError`` (422) for a credential mapping
        with unusable names or an unknown provider; ``ProjectNotFoundError``."""
        _check_credentials({k: v for k, v in changes.credentials.items() if v is not None})
        if changes.default_provider not in (UNSET, None) and self._registry is not None:
            try:
                self._registry.get(changes.default_provider)
            except UnknownProviderError as exc:
                raise ValidationError(exc.message, field="default_provider") from exc
        async with self._locks.setdefault(name, asyncio.Lock()):
            project = await self._store.get_project(name)
            updated = replace(
                project,
                credentials=_merged(project.credentials, changes.credentials),
                settings=_merged(project.settings, changes.settings),
                default_provider=project.default_provider
                if changes.default_provider is UNSET
                else changes.default_provider,
                default_model=project.default_model
                if changes.default_model is UNSET
                else changes.default_model,
            )
            return await self._store.update_project(updated)

    async def delete(self, name: str) -> Deletion:
        """Delete ``name``: its record, its project-scoped credentials and its recorded agent
        sessions. Its repository, tasks and their events stay. ``ConflictError`` (409)
        while a build of it is queued or running; ``ProjectNotFoundError``."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            project = await self._store.get_project(name)
            if self._queue is not None:
                busy = {
                    status.value: count
                    for status in (TaskStatus.QUEUED, TaskStatus.RUNNING)
                    if (count := await self._queue.count(status=status, concurrency_key=name))
                }
                if busy:
                    listing = " and ".join(f"{n} {status}" for status, n in busy.items())
                    raise ConflictError(
                        f"project {name!r} has builds {listing}: cancel them or let them"
                        " finish, then delete it"
                    )
            removed = [f"project {name!r}", "its recorded agent sessions"]
            if self._credentials is not None:
                for info in await self._credentials.list(project=name):
                    if info.project == name:
                        await self._credentials.delete(info.name, project=name)
                        removed.append(f"credential {info.name!r} of the project")
            await self._store.delete_project(name)
        log.info("project.deleted", project=name)
        kept = (f"repository {project.repo_url}", "its tasks and their events")
        return Deletion(removed=tuple(removed), kept=kept)

    async def commit_patch(self, name: str, sha: str) -> str:
        """The patch of commit ``sha`` as the project's remote has it (a forge remote that
        does not answer: ``RemoteUnavailableError``, 424)."""
        project = await self._store.get_project(name)
        remote = GitRemote(project.repo_url, token=await self._git_token(project))
        scratch = str(self.config.scratch_dir / f"diff-{uuid.uuid4().hex}")
        async with self._remote_step(project):
            return await self._git.commit_patch(remote, sha, scratch)

    def _check_repo_url(self, url: str) -> str:
        """``url`` if a project may use it: a forge URL, or a repository under the
        embedded git directory (forgeline's own). Any other path on this disk, ``file://``
        included, is refused: builds would read and write it with forgeline's rights."""
        try:
            kind = classify_remote(url)  # unknown schemes, URLs carrying credentials
        except ValidationError as exc:
            raise ValidationError(exc.message, field="repo_url") from exc
        base = self.config.git_base_url.rstrip("/")
        if kind is RemoteKind.PATH and not (
            self.embedded(base) and url.startswith(f"{base}/") and posixpath.normpath(url) == url
        ):
            own = f", or a path under {base}/ (forgeline's own)" if self.embedded(base) else ""
            raise ValidationError(
                f"{url!r} is not a remote forgeline may use: give an https://, http:// or"
                f" ssh:// URL{own}",
                field="repo_url",
            )
        return url

    async def _provision(self, project: Project) -> Project:
        settings = {k: v for k, v in project.settings.items() if k != "creation_error"}
        token = await self._git_token(project)
        remote = GitRemote(project.repo_url, token=token)
        if self.embedded(project.repo_url):
            Path(project.repo_url).parent.mkdir(parents=True, exist_ok=True)
            await self._git.init_bare(project.repo_url, default_branch=project.default_branch)
        scratch = str(self.config.scratch_dir / project.name)
        async with self._remote_step(project):
            checkout = await self._git.prepare_checkout(
                project.name, remote, project.default_branch, scratch
            )
        if checkout.empty:
            if project.template and self._templates is not None:
                rendered = await asyncio.to_thread(
                    self._templates.render,
                    project.template,
                    project.variables,
                    Path(scratch),
                    project_name=project.name,
                )
                if rendered.deploy_url:
                    settings["deploy_url"] = rendered.deploy_url
                message = f"Create {project.name} from template {project.template}"
                await self._git.commit(scratch, message, self.config.author)
            else:
                await self._git.commit(
                    scratch, "Initial commit", self.config.author, allow_empty=True
                )
            async with self._remote_step(project):
                await self._git.push(scratch, remote, project.default_branch)
        elif project.template and self._templates is not None and "deploy_url" not in settings:
            answers = await asyncio.to_thread(
                self._templates.validate,
                project.template,
                project.variables,
                project_name=project.name,
            )
            info = self._templates.get_template(project.template)
            if info.deploy_url:
                settings["deploy_url"] = info.deploy_url.format(**answers)
        await asyncio.to_thread(shutil.rmtree, scratch, True)
        if self._ci is not None:
            settings.update(await self._activate_ci(project))
        ready = replace(project, settings=settings, state=READY)
        return await self._store.update_project(ready)

    @contextlib.asynccontextmanager
    async def _remote_step(self, project: Project) -> AsyncIterator[None]:
        """Git failures of a step that talks to a forge remote are the remote's (424)."""
        try:
            yield
        except GitError as exc:
            if self.embedded(project.repo_url):
                raise
            raise RemoteUnavailableError(project.repo_url, exc.message) from exc

    async def _git_token(self, project: Project) -> Secret | None:
        if self._credentials is None or not project.repo_url.startswith(("https://", "http://")):
            return None
        try:
            return await self._credentials.get(
                self.config.git_token_credential, project=project.name
            )
        except CredentialNotFoundError:
            return None

    async def _activate_ci(self, project: Project) -> dict[str, Any]:
        assert self._ci is not None  # noqa: S101 - checked by the caller
        repo_id = int(
            project.settings.get("woodpecker_repo_id")
            or await self._ci.activate(repo_full_name(project.repo_url))
        )
        names: tuple[str, ...] = ()
        if project.template and self._templates is not None:
            names = self._templates.get_template(project.template).secrets
        secrets: dict[str, Secret] = {}
        if names and self._credentials is not None:
            for secret_name in names:
                try:
                    secrets[secret_name] = await self._credentials.get(
                        secret_name, project=project.name
                    )
                except CredentialNotFoundError:
                    log.warning("project.deploy_secret_missing", secret=secret_name)
        if secrets:
            await self._ci.set_secrets(repo_id, secrets)
        return {"woodpecker_repo_id": repo_id}


def _check_credentials(mapping: Mapping[str, str]) -> dict[str, str]:
    """``{ENV_VAR: credential name}`` if every name can be used. Whether the credentials
    exist is checked when a build is submitted: a project's own credentials can only be
    stored once the project exists."""
    try:
        return validate_credential_mapping(mapping)
    except ValidationError as exc:
        raise ValidationError(exc.message, field="credentials") from exc


def _merged(stored: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``stored`` with ``patch`` merged in; a ``None`` in ``patch`` removes its key."""
    merged = {**stored, **patch}
    return {key: value for key, value in merged.items() if value is not None}


def repo_full_name(repo_url: str) -> str:
    """``owner/name`` of a forge URL (``https://forge/owner/name.git``), as CI names it."""
    path = urlsplit(repo_url).path if "://" in repo_url else repo_url
    parts = [p for p in path.strip("/").split("/") if p]
    tail = parts[-2:] if len(parts) >= 2 else parts
    return "/".join(tail).removesuffix(".git")
