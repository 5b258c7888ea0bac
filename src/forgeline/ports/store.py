"""The Store port: projects, the event log of each task, and API tokens."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from forgeline.domain.agent import AgentEvent, event_from_dict
from forgeline.domain.project import Project


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored: its place, its type and its public JSON, kept as text so a
    replay can send it without decoding and re-encoding."""

    seq: int
    type: str
    body: str

    def to_dict(self) -> dict[str, Any]:
        """The event's public JSON shape."""
        data: dict[str, Any] = json.loads(self.body)
        return data

    def event(self) -> AgentEvent:
        """The typed event."""
        return event_from_dict(self.to_dict())


@dataclass(frozen=True, slots=True)
class Appended:
    """Word that task ``task_id`` has an event at ``seq``; the event itself comes along
    when this process appended it (no need to read it back)."""

    task_id: str
    seq: int
    event: StoredEvent | None = None


#: What :meth:`Store.watch_appends` calls: with an :class:`Appended`, or with None when
#: word may have been lost (a notification connection dropped): any task may have new events.
OnAppend = Callable[[Appended | None], None]


class AppendWatch(Protocol):
    """A subscription of :meth:`Store.watch_appends`."""

    @property
    def live(self) -> bool:
        """True while appends by *other* processes are told too; while False, whoever
        needs them must look for them (poll)."""
        ...

    def close(self) -> None:
        """Stop telling; idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class ApiToken:
    """An API token's record; the token itself is never stored, only its hash.

    ``projects`` limits a builder token to the named projects; ``None``: every project.
    """

    id: str
    name: str
    role: str
    created_at: datetime
    last_used_at: datetime | None = None
    projects: tuple[str, ...] | None = None

    def sees(self, project: str) -> bool:
        """True when this token may see and build ``project``."""
        return self.projects is None or project in self.projects


class Store(Protocol):
    """Durable state beside the queue (same database, SQLite or PostgreSQL).

    - ``append_event`` assigns the next ``seq`` of the task (dense, from 1) atomically, so
      concurrent writers never produce a gap or a duplicate, and tells ``watch_appends``.
    - Every wait is bounded by its ``timeout_s``; database errors surface as ``StorageError``.
    """

    async def create_project(self, project: Project) -> Project:
        """Insert a project; ``ProjectExistsError`` if the name is taken."""
        ...

    async def get_project(self, name: str) -> Project:
        """The project, or ``ProjectNotFoundError``."""
        ...

    async def list_projects(
        self,
        *,
        after: str | None = None,
        limit: int | None = None,
        names: Collection[str] | None = None,
    ) -> list[Project]:
        """Projects by name: those named after ``after``, at most ``limit``, only
        ``names`` when given."""
        ...

    async def update_project(self, project: Project) -> Project:
        """Replace a project's stored fields; ``ProjectNotFoundError`` if it is gone."""
        ...

    async def delete_project(self, name: str) -> None:
        """Remove a project and its agent sessions; ``ProjectNotFoundError`` if it is gone."""
        ...

    async def record_session(
        self, project: str, provider: str, session_id: str, task_id: str
    ) -> None:
        """Remember ``session_id`` as the newest session of ``provider`` in ``project``."""
        ...

    async def last_session(self, project: str, provider: str) -> str | None:
        """The session last recorded for ``provider`` in ``project``, or None."""
        ...

    async def append_event(self, task_id: str, event: AgentEvent) -> AgentEvent:
        """Store ``event`` as the task's next event; returns it numbered."""
        ...

    async def list_events(
        self, task_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> Sequence[StoredEvent]:
        """Events of the task with ``seq > after_seq``, in order."""
        ...

    async def last_event(self, task_id: str) -> StoredEvent | None:
        """The task's newest event, or None when it has none."""
        ...

    async def watch_appends(self, on_append: OnAppend) -> AppendWatch:
        """Tell ``on_append`` of events appended from now on: this process's own at once,
        once committed (callbacks run on the event loop and must be quick); other
        processes' as the database tells of them (PostgreSQL notifications), while the
        watch is ``live``; and ``None`` when word may have been lost."""
        ...

    async def add_token(
        self,
        token_id: str,
        name: str,
        token_hash: str,
        role: str,
        projects: Sequence[str] | None = None,
    ) -> ApiToken:
        """Record a new API token by its hash (limited to ``projects`` when given)."""
        ...

    async def list_tokens(self) -> list[ApiToken]:
        """Every API token, oldest first."""
        ...

    async def delete_token(self, token_id: str) -> None:
        """Revoke a token for good; ``TokenNotFoundError`` if there is none with that id."""
        ...

    async def find_token(self, token_hash: str) -> ApiToken | None:
        """The token with that hash (and mark it used), or None."""
        ...

    async def count_tokens(self) -> int:
        """How many API tokens exist."""
        ...

    async def aclose(self) -> None:
        """Release resources; idempotent (the database handle is closed by its owner)."""
        ...
