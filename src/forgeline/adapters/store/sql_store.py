"""The Store on SQLite or PostgreSQL, over :mod:`forgeline.adapters.sql.executor`.

Its queries are in ``sql/<dialect>_queries.sql``. On PostgreSQL the executor repeats an
operation when the connection breaks, so each is safe to repeat: reads and updates are, a
repeated project insert finds its own row (``ProjectExistsError``, which
``ProjectService`` resumes from), a repeated token insert finds its own id, and a repeated
event append recognises the event its first try committed.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence

from forgeline.adapters.sql.database import Database
from forgeline.adapters.sql.executor import Session, sql_executor
from forgeline.adapters.store.notify import (
    AppendNotifier,
    Watch,
    notification,
    parse_notification,
)
from forgeline.adapters.store.rows import event_body, project_from_row, token_from_row
from forgeline.domain.agent import AgentEvent
from forgeline.domain.clock import utcnow
from forgeline.domain.errors import ProjectExistsError, ProjectNotFoundError, TokenNotFoundError
from forgeline.domain.project import Project
from forgeline.ports.store import ApiToken, AppendWatch, OnAppend, StoredEvent

#: Every event append on PostgreSQL notifies this channel; its payload is
#: :func:`~forgeline.adapters.store.notify.notification`.
EVENTS_CHANNEL = "forgeline_events"


class SqlStore:
    """Projects, task events and API tokens in the SQLite or PostgreSQL database."""

    def __init__(self, db: Database) -> None:
        self._sql = sql_executor(db, "forgeline.adapters.store.sql", "store")
        self._appended = AppendNotifier()
        #: Names this store's appends in their notifications: it tells them in-process,
        #: at once and with the event, and skips their notifications.
        self._origin = uuid.uuid4().hex[:16]

    def _project_params(self, project: Project) -> dict[str, object]:
        json = self._sql.codec.json
        return {
            "name": project.name,
            "repo_url": project.repo_url,
            "default_branch": project.default_branch,
            "template": project.template,
            "variables": json(project.variables),
            "credentials": json(project.credentials),
            "settings": json(project.settings),
            "state": project.state,
            "default_provider": project.default_provider,
            "default_model": project.default_model,
            "now": self._sql.codec.time(utcnow()),
        }

    async def create_project(self, project: Project) -> Project:
        """Insert a project; ``ProjectExistsError`` if the name is taken."""
        params = self._project_params(project)
        if not await self._sql.write(lambda s: s.execute("insert_project", params)):
            raise ProjectExistsError(project.name)
        return await self.get_project(project.name)

    async def get_project(self, name: str) -> Project:
        """The project, or ``ProjectNotFoundError``."""
        row = await self._sql.read(lambda s: s.one("get_project", {"name": name}))
        if row is None:
            raise ProjectNotFoundError(name)
        return project_from_row(row)

    async def list_projects(
        self,
        *,
        after: str | None = None,
        limit: int | None = None,
        names: Collection[str] | None = None,
    ) -> list[Project]:
        """Projects by name, after ``after``, at most ``limit``, only ``names`` if given."""
        params = {
            "after": after,
            "names": None if names is None else self._sql.codec.json(list(names)),
            "limit": limit,
        }
        rows = await self._sql.read(lambda s: s.all("list_projects", params))
        return [project_from_row(row) for row in rows]

    async def update_project(self, project: Project) -> Project:
        """Replace a project's stored fields."""
        params = self._project_params(project)
        if await self._sql.write(lambda s: s.one("update_project", params)) is None:
            raise ProjectNotFoundError(project.name)
        return await self.get_project(project.name)

    async def delete_project(self, name: str) -> None:
        """Remove a project and its agent sessions (one transaction; safe to repeat)."""

        async def delete(s: Session) -> bool:
            await s.execute("delete_project_sessions", {"name": name})
            return await s.one("delete_project", {"name": name}) is not None

        if not await self._sql.write(delete):
            raise ProjectNotFoundError(name)

    async def record_session(
        self, project: str, provider: str, session_id: str, task_id: str
    ) -> None:
        """Remember the newest session of ``provider`` in ``project``."""
        params = {
            "project": project,
            "provider": provider,
            "session_id": session_id,
            "task_id": task_id,
            "now": self._sql.codec.time(utcnow()),
        }
        await self._sql.write(lambda s: s.execute("record_session", params))

    async def last_session(self, project: str, provider: str) -> str | None:
        """The session last recorded for ``provider`` in ``project``."""
        params = {"project": project, "provider": provider}
        row = await self._sql.read(lambda s: s.one("last_session", params))
        return None if row is None else str(row["session_id"])

    async def append_event(self, task_id: str, event: AgentEvent) -> AgentEvent:
        """Store ``event`` as the task's next event.

        The task's writers are serialized (``BEGIN IMMEDIATE`` on SQLite, an advisory lock
        on PostgreSQL), so the newest-event read and the insert cannot interleave: ``seq``
        stays dense, without duplicates. On PostgreSQL the insert notifies
        :data:`EVENTS_CHANNEL`, delivered when it commits: watchers in other processes
        learn of it without polling.
        """
        tries = 0

        async def insert(s: Session) -> tuple[AgentEvent, str]:
            nonlocal tries
            tries += 1
            await s.execute("lock_task_events", {"task_id": task_id})
            newest = await s.one("newest_event", {"task_id": task_id})
            last: int = newest["seq"] if newest else 0
            if tries > 1 and newest is not None:
                # A retry: the first try may have committed before its answer was lost.
                earlier = event.numbered(last, task_id)
                if event_body(earlier.to_dict()) == newest["body"]:
                    return earlier, newest["body"]
            numbered = event.numbered(last + 1, task_id)
            body = event_body(numbered.to_dict())
            await s.execute(
                "insert_event",
                {
                    "task_id": task_id,
                    "seq": numbered.seq,
                    "type": numbered.type,
                    "body": body,
                    "channel": EVENTS_CHANNEL,
                    "notification": notification(self._origin, numbered.seq, task_id),
                },
            )
            return numbered, body

        numbered, body = await self._sql.write(insert)
        self._appended.appended(task_id, StoredEvent(numbered.seq, numbered.type, body))
        return numbered

    async def list_events(
        self, task_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> Sequence[StoredEvent]:
        """Events of the task with ``seq > after_seq``, in order."""
        params = {"task_id": task_id, "after_seq": after_seq, "limit": limit}
        rows = await self._sql.read(lambda s: s.all("list_events", params))
        return [StoredEvent(seq=r["seq"], type=r["type"], body=r["body"]) for r in rows]

    async def last_event(self, task_id: str) -> StoredEvent | None:
        """The task's newest event, or None."""
        row = await self._sql.read(lambda s: s.one("newest_event", {"task_id": task_id}))
        return None if row is None else StoredEvent(row["seq"], row["type"], row["body"])

    async def watch_appends(self, on_append: OnAppend) -> AppendWatch:
        """Tell ``on_append`` of this process's appends at once. On PostgreSQL, of other
        processes' too, by the notifications of :data:`EVENTS_CHANNEL` on the process's one
        listening connection: live while that connection is up, ``None`` told when it
        drops or comes back (notifications sent meanwhile are lost). Never ``live`` on
        SQLite, which cannot tell of another process's writes: a watcher polls for those."""
        listener = self._sql.listener
        if listener is None:
            return Watch(lambda: False, self._appended.add(on_append))

        def notified(payload: str) -> None:
            parsed = parse_notification(payload)
            if parsed is None:
                on_append(None)
            elif parsed[0] != self._origin:
                on_append(parsed[1])

        watch = Watch(
            lambda: listener.connected,
            self._appended.add(on_append),
            listener.subscribe({EVENTS_CHANNEL: notified}, lambda: on_append(None)),
        )
        await listener.start(wait_s=0)
        return watch

    async def add_token(
        self,
        token_id: str,
        name: str,
        token_hash: str,
        role: str,
        projects: Sequence[str] | None = None,
    ) -> ApiToken:
        """Record a new API token by its hash."""
        params = {
            "id": token_id,
            "name": name,
            "token_hash": token_hash,
            "role": role,
            "projects": None if projects is None else self._sql.codec.json(list(projects)),
            "now": self._sql.codec.time(utcnow()),
        }

        async def insert(s: Session) -> ApiToken:
            await s.execute("insert_token", params)
            row = await s.one("get_token", params)
            assert row is not None  # noqa: S101 - inserted just now, in this transaction
            return token_from_row(row)

        return await self._sql.write(insert)

    async def find_token(self, token_hash: str) -> ApiToken | None:
        """The token with that hash, marked used now; or None."""
        params = {"token_hash": token_hash, "now": self._sql.codec.time(utcnow())}
        row = await self._sql.write(lambda s: s.one("use_token", params))
        return None if row is None else token_from_row(row)

    async def list_tokens(self) -> list[ApiToken]:
        """Every API token, oldest first."""
        rows = await self._sql.read(lambda s: s.all("list_tokens"))
        return [token_from_row(row) for row in rows]

    async def delete_token(self, token_id: str) -> None:
        """Revoke a token for good."""
        if await self._sql.write(lambda s: s.one("delete_token", {"id": token_id})) is None:
            raise TokenNotFoundError(token_id)

    async def count_tokens(self) -> int:
        """How many API tokens exist."""
        row = await self._sql.read(lambda s: s.one("count_tokens"))
        return 0 if row is None else int(row["count"])

    async def aclose(self) -> None:
        """Nothing of its own to release."""
