"""The Store port: projects, the event log of each task, and API tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from forgeline.domain.agent import AgentEvent
from forgeline.domain.project import Project


class Store(Protocol):
    """Durable state beside the queue (same database, SQLite or PostgreSQL).

    - ``append_event`` assigns the next ``seq`` of the task (dense, from 1) atomically, so
      concurrent writers never produce a gap or a duplicate, and wakes ``wait_for_events``.
    - Every wait is bounded by its ``timeout_s``; database errors surface as ``StorageError``.
    """

    async def create_project(self, project: Project) -> Project:
        """Insert a project; ``ProjectExistsError`` if the name is taken."""
        ...

    async def get_project(self, name: str) -> Project:
        """The project, or ``ProjectNotFoundError``."""
        ...

    async def list_projects(self) -> list[Project]:
        """Every project, by name."""
        ...

    async def update_project(self, project: Project) -> Project:
        """Replace a project's stored fields."""
        ...

    async def append_event(self, task_id: str, event: AgentEvent) -> AgentEvent:
        """Store ``event`` as the task's next event; returns it numbered."""
        ...

    async def list_events(
        self, task_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> Sequence[AgentEvent]:
        """Events of the task with ``seq > after_seq``, in order."""
        ...

    async def wait_for_events(self, task_id: str, after_seq: int, timeout_s: float) -> None:
        """Return when the task may have events after ``after_seq``, or after ``timeout_s``."""
        ...

    async def aclose(self) -> None:
        """Close connections; idempotent."""
        ...
