"""The seams where the dashboard meets API operations that are not in the services yet.

Each function here is the one place a page asks for such an operation. Today each answers
with what the services offer (or says the operation is not available, which the page
shows); once the services have it, each becomes a call of theirs and no page changes.
"""

from __future__ import annotations

from collections.abc import Collection

from forgeline.bootstrap import Container
from forgeline.domain.task import TaskStatus, WorkTask
from forgeline.entrypoints.ui.web import NotAvailableError
from forgeline.ports.store import ApiToken
from forgeline.services.builds import BUILD_KIND


def visible_projects(_viewer: ApiToken) -> Collection[str] | None:
    """The projects ``viewer`` may see (``None``: every one). Today every token sees every
    project, as the API lets it; with project-limited tokens: ``viewer.projects``."""
    return None


async def list_builds(
    container: Container,
    *,
    projects: Collection[str] | None = None,
    status: TaskStatus | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[WorkTask], str | None]:
    """Build tasks of ``projects`` (``None``: all), newest first, at most ``limit``; and the
    cursor of the next page. Today the first page of one project or of all (no cursor);
    with the paged task listing: ``container.builds.list(projects=…, status=…,
    limit=…, cursor=…)``."""
    if cursor is not None:
        raise NotAvailableError("paging through builds is not available on this server yet")
    keys = list(projects) if projects is not None else [None]
    if len(keys) != 1:
        raise NotAvailableError("listing the builds of several projects is not available yet")
    tasks = await container.queue.list(
        kind=BUILD_KIND, status=status, concurrency_key=keys[0], limit=limit
    )
    return tasks, None


async def retry_build(_container: Container, _viewer: ApiToken, _task_id: str) -> str:
    """Queue a re-run of the finished build ``task_id``; the new task's id. With the retry
    operation: ``container.builds.retry(task_id, projects=…, client=viewer.id)``."""
    raise NotAvailableError("re-running a build is not available on this server yet")


async def build_patch(_container: Container, _viewer: ApiToken, _task: WorkTask) -> str | None:
    """The patch of the commit a finished build pushed (``None``: none to show). With the
    diff operation: ``container.builds.pushed_commit(…)`` then
    ``container.projects.commit_patch(project, sha)``, redacted."""
    return None


async def list_tokens(_container: Container) -> list[ApiToken] | None:
    """Every API token's record (``None``: listing is not available). With token listing:
    ``container.auth.list()``."""
    return None


async def revoke_token(_container: Container, _token_id: str) -> None:
    """Revoke a token. With token revocation: ``container.auth.revoke(token_id)``."""
    raise NotAvailableError("revoking a token is not available on this server yet")
