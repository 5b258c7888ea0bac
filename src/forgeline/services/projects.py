"""ProjectService: create a project (repository, template, CI) in steps a retry can resume.

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
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from forgeline.domain.errors import (
    CredentialNotFoundError,
    ForgelineError,
    GitError,
    ProjectExistsError,
    RemoteUnavailableError,
    TemplateNotFoundError,
    ValidationError,
)
from forgeline.domain.git import GitAuthor, GitRemote, RemoteKind, classify_remote
from forgeline.domain.project import Project, validate_project_name
from forgeline.domain.secrets import Secret, validate_credential_mapping
from forgeline.ports.ci import CIProvider
from forgeline.ports.credentials import CredentialStore
from forgeline.ports.git import Git
from forgeline.ports.store import Store
from forgeline.ports.templates import TemplateProvider

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


class ProjectService:
    """Creates, lists and shows projects."""

    def __init__(
        self,
        config: ProjectConfig,
        *,
        store: Store,
        git: Git,
        templates: TemplateProvider | None = None,
        ci: CIProvider | None = None,
        credentials: CredentialStore | None = None,
    ) -> None:
        self.config = config
        self._store = store
        self._git = git
        self._templates = templates
        self._ci = ci
        self._credentials = credentials
        self._locks: dict[str, asyncio.Lock] = {}

    def embedded(self, repo_url: str) -> bool:
        """True when ``repo_url`` is a bare repository on forgeline's own disk."""
        return "://" not in repo_url and repo_url.startswith("/")

    def default_repo_url(self, name: str) -> str:
        """``<git base>/<name>.git``: a path (embedded) or a URL under a forge."""
        return f"{self.config.git_base_url.rstrip('/')}/{name}.git"

    async def list(self) -> list[Project]:
        """Every project, by name."""
        return await self._store.list_projects()

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


def repo_full_name(repo_url: str) -> str:
    """``owner/name`` of a forge URL (``https://forge/owner/name.git``), as CI names it."""
    path = urlsplit(repo_url).path if "://" in repo_url else repo_url
    parts = [p for p in path.strip("/").split("/") if p]
    tail = parts[-2:] if len(parts) >= 2 else parts
    return "/".join(tail).removesuffix(".git")
