"""The Store on PostgreSQL.

Every operation goes through :meth:`PostgresDatabase.run`, which retries it when the
connection breaks, so each is safe to repeat: reads and updates are, a repeated project
insert finds its own row (``ProjectExistsError``, which ``ProjectService`` resumes from),
and a repeated event append recognises the event its first try committed.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from forgeline.adapters.sql.database import PostgresDatabase
from forgeline.adapters.store.notify import (
    AppendNotifier,
    Watch,
    notification,
    parse_notification,
)
from forgeline.adapters.store.rows import (
    SELECT_PROJECTS,
    SELECT_TOKENS,
    event_body,
    project_from_row,
    token_from_row,
)
from forgeline.domain.agent import AgentEvent
from forgeline.domain.errors import ProjectExistsError, ProjectNotFoundError, TokenNotFoundError
from forgeline.domain.project import Project
from forgeline.ports.store import ApiToken, AppendWatch, OnAppend, StoredEvent

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
Row = tuple[Any, ...]

#: Every event append notifies this channel; its payload is
#: :func:`~forgeline.adapters.store.notify.notification`.
EVENTS_CHANNEL = "forgeline_events"


async def _one(conn: Conn, query: str, params: Sequence[Any] = ()) -> Row | None:
    cur = await conn.execute(query, params)
    return await cur.fetchone()


async def _all(conn: Conn, query: str, params: Sequence[Any] = ()) -> list[Row]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


class PostgresStore:
    """Projects, task events and API tokens in PostgreSQL."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        self._appended = AppendNotifier()
        #: Names this store's appends in their notifications: it tells them in-process,
        #: at once and with the event, and skips their notifications.
        self._origin = uuid.uuid4().hex[:16]

    async def create_project(self, project: Project) -> Project:
        """Insert a project; ``ProjectExistsError`` if the name is taken."""

        async def insert(conn: Conn) -> None:
            try:
                await conn.execute(
                    "insert into projects (name, repo_url, default_branch, template, variables,"
                    " credentials, settings, state, default_provider, default_model)"
                    " values (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                    (
                        project.name,
                        project.repo_url,
                        project.default_branch,
                        project.template,
                        Jsonb(dict(project.variables)),
                        Jsonb(dict(project.credentials)),
                        Jsonb(dict(project.settings)),
                        project.state,
                        project.default_provider,
                        project.default_model,
                    ),
                )
            except psycopg.errors.UniqueViolation as exc:
                raise ProjectExistsError(project.name) from exc

        await self._db.run(insert, "store insert")
        return await self.get_project(project.name)

    async def get_project(self, name: str) -> Project:
        """The project, or ``ProjectNotFoundError``."""
        row = await self._db.run(
            lambda conn: _one(conn, SELECT_PROJECTS + " where name = %s", (name,)), "store read"
        )
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
        params = {"after": after, "names": None if names is None else list(names), "limit": limit}
        query = (
            SELECT_PROJECTS + " where (%(after)s::text is null or name > %(after)s)"
            " and (%(names)s::text[] is null or name = any(%(names)s::text[]))"
            " order by name limit %(limit)s"
        )

        async def select(conn: Conn) -> list[Row]:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

        return [project_from_row(r) for r in await self._db.run(select, "store read")]

    async def update_project(self, project: Project) -> Project:
        """Replace a project's stored fields."""
        row = await self._db.run(
            lambda conn: _one(
                conn,
                "update projects set repo_url=%s, default_branch=%s, template=%s,"
                " variables=%s, credentials=%s, settings=%s, state=%s, default_provider=%s,"
                " default_model=%s, updated_at=now() where name=%s returning name",
                (
                    project.repo_url,
                    project.default_branch,
                    project.template,
                    Jsonb(dict(project.variables)),
                    Jsonb(dict(project.credentials)),
                    Jsonb(dict(project.settings)),
                    project.state,
                    project.default_provider,
                    project.default_model,
                    project.name,
                ),
            ),
            "store update",
        )
        if row is None:
            raise ProjectNotFoundError(project.name)
        return await self.get_project(project.name)

    async def delete_project(self, name: str) -> None:
        """Remove a project and its agent sessions (one transaction; safe to repeat)."""

        async def delete(conn: Conn) -> Row | None:
            async with conn.transaction():
                await conn.execute("delete from agent_sessions where project = %s", (name,))
                return await _one(
                    conn, "delete from projects where name = %s returning name", (name,)
                )

        if await self._db.run(delete, "store delete") is None:
            raise ProjectNotFoundError(name)

    async def record_session(
        self, project: str, provider: str, session_id: str, task_id: str
    ) -> None:
        """Remember the newest session of ``provider`` in ``project``."""
        await self._db.run(
            lambda conn: conn.execute(
                "insert into agent_sessions (project, provider, session_id, task_id)"
                " values (%s,%s,%s,%s) on conflict (project, provider) do update set"
                " session_id = excluded.session_id, task_id = excluded.task_id,"
                " recorded_at = now()",
                (project, provider, session_id, task_id),
            ),
            "store update",
        )

    async def last_session(self, project: str, provider: str) -> str | None:
        """The session last recorded for ``provider`` in ``project``."""
        row = await self._db.run(
            lambda conn: _one(
                conn,
                "select session_id from agent_sessions where project = %s and provider = %s",
                (project, provider),
            ),
            "store read",
        )
        return None if row is None else str(row[0])

    async def append_event(self, task_id: str, event: AgentEvent) -> AgentEvent:
        """Store ``event`` as the task's next event.

        A transaction-scoped advisory lock on the task serializes its writers, so the
        newest-event read and the insert cannot interleave (dense, no duplicate). The insert
        notifies :data:`EVENTS_CHANNEL`, delivered when it commits: watchers in other
        processes learn of it without polling.
        """
        tries = 0

        async def insert(conn: Conn) -> tuple[AgentEvent, str]:
            nonlocal tries
            tries += 1
            async with conn.transaction():
                # Separate statements: under READ COMMITTED each statement gets a fresh
                # snapshot, so the newest event is read only after the lock is held.
                await conn.execute(
                    "select pg_advisory_xact_lock(hashtextextended(%s, 0))", (task_id,)
                )
                newest = await _one(
                    conn,
                    "select seq, body from task_events where task_id = %s"
                    " order by seq desc limit 1",
                    (task_id,),
                )
                last = newest[0] if newest else 0
                if tries > 1 and newest is not None:
                    # A retry: the first try may have committed before its answer was lost.
                    earlier = event.numbered(last, task_id)
                    if event_body(earlier.to_dict()) == newest[1]:
                        return earlier, newest[1]
                numbered = event.numbered(last + 1, task_id)
                body = event_body(numbered.to_dict())
                await conn.execute(
                    "insert into task_events (task_id, seq, type, body) values (%s,%s,%s,%s)"
                    " returning pg_notify(%s, %s)",
                    (
                        task_id,
                        numbered.seq,
                        numbered.type,
                        body,
                        EVENTS_CHANNEL,
                        notification(self._origin, numbered.seq, task_id),
                    ),
                )
                return numbered, body

        numbered, body = await self._db.run(insert, "store append")
        self._appended.appended(task_id, StoredEvent(numbered.seq, numbered.type, body))
        return numbered

    async def list_events(
        self, task_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> Sequence[StoredEvent]:
        """Events of the task with ``seq > after_seq``, in order."""
        rows = await self._db.run(
            lambda conn: _all(
                conn,
                "select seq, type, body from task_events where task_id = %s and seq > %s"
                " order by seq limit %s",
                (task_id, after_seq, limit),
            ),
            "store read",
        )
        return [StoredEvent(seq=r[0], type=r[1], body=r[2]) for r in rows]

    async def last_event(self, task_id: str) -> StoredEvent | None:
        """The task's newest event, or None."""
        row = await self._db.run(
            lambda conn: _one(
                conn,
                "select seq, type, body from task_events where task_id = %s"
                " order by seq desc limit 1",
                (task_id,),
            ),
            "store read",
        )
        return None if row is None else StoredEvent(seq=row[0], type=row[1], body=row[2])

    async def watch_appends(self, on_append: OnAppend) -> AppendWatch:
        """Tell ``on_append`` of this process's appends at once, and of other processes'
        by the notifications of :data:`EVENTS_CHANNEL` on the process's one listening
        connection; live while that connection is up, ``None`` told when it drops or comes
        back (notifications sent meanwhile are lost)."""
        listener = self._db.listener

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
        scope = None if projects is None else Jsonb(list(projects))

        async def insert(conn: Conn) -> Row | None:
            # A repeat of an insert that committed finds its own id.
            await conn.execute(
                "insert into api_tokens (id, name, token_hash, role, projects)"
                " values (%s,%s,%s,%s,%s) on conflict (id) do nothing",
                (token_id, name, token_hash, role, scope),
            )
            return await _one(
                conn,
                SELECT_TOKENS + " where id = %s",
                (token_id,),
            )

        row = await self._db.run(insert, "store insert")
        assert row is not None  # noqa: S101 - inserted just now
        return token_from_row(row)

    async def find_token(self, token_hash: str) -> ApiToken | None:
        """The token with that hash, marked used now; or None."""
        row = await self._db.run(
            lambda conn: _one(
                conn,
                "update api_tokens set last_used_at = now() where token_hash = %s"
                " returning id, name, role, created_at, last_used_at, projects",
                (token_hash,),
            ),
            "store read",
        )
        return None if row is None else token_from_row(row)

    async def list_tokens(self) -> list[ApiToken]:
        """Every API token, oldest first."""
        rows = await self._db.run(
            lambda conn: _all(
                conn,
                SELECT_TOKENS + " order by created_at, id",
            ),
            "store read",
        )
        return [token_from_row(row) for row in rows]

    async def delete_token(self, token_id: str) -> None:
        """Revoke a token for good."""
        row = await self._db.run(
            lambda conn: _one(
                conn, "delete from api_tokens where id = %s returning id", (token_id,)
            ),
            "store delete",
        )
        if row is None:
            raise TokenNotFoundError(token_id)

    async def count_tokens(self) -> int:
        """How many API tokens exist."""
        row = await self._db.run(
            lambda conn: _one(conn, "select count(*) from api_tokens"), "store read"
        )
        return int(row[0]) if row else 0

    async def aclose(self) -> None:
        """Nothing of its own to release."""
