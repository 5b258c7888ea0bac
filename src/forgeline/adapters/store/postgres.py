"""The Store on PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb

from forgeline.adapters.sql.database import PostgresDatabase
from forgeline.adapters.store.notify import EventSignals
from forgeline.adapters.store.rows import SELECT_PROJECTS, event_body, parse_time, project_from_row
from forgeline.domain.agent import AgentEvent, utcnow
from forgeline.domain.errors import ProjectExistsError, ProjectNotFoundError, StorageError
from forgeline.domain.project import Project
from forgeline.ports.store import ApiToken, StoredEvent


def _error(action: str, exc: psycopg.Error) -> StorageError:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return StorageError(f"store {action} failed: {first}")


class PostgresStore:
    """Projects, task events and API tokens in PostgreSQL."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        self._signals = EventSignals()

    async def create_project(self, project: Project) -> Project:
        """Insert a project; ``ProjectExistsError`` if the name is taken."""
        try:
            async with self._db.connection() as conn:
                await conn.execute(
                    "insert into projects (name, repo_url, default_branch, template, variables,"
                    " credentials, settings, state) values (%s,%s,%s,%s,%s,%s,%s,%s)",
                    (
                        project.name,
                        project.repo_url,
                        project.default_branch,
                        project.template,
                        Jsonb(dict(project.variables)),
                        Jsonb(dict(project.credentials)),
                        Jsonb(dict(project.settings)),
                        project.state,
                    ),
                )
        except psycopg.errors.UniqueViolation as exc:
            raise ProjectExistsError(project.name) from exc
        except psycopg.Error as exc:
            raise _error("insert", exc) from exc
        return await self.get_project(project.name)

    async def get_project(self, name: str) -> Project:
        """The project, or ``ProjectNotFoundError``."""
        try:
            async with self._db.connection() as conn:
                cur = await conn.execute(SELECT_PROJECTS + " where name = %s", (name,))
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise _error("read", exc) from exc
        if row is None:
            raise ProjectNotFoundError(name)
        return project_from_row(row)

    async def list_projects(self) -> list[Project]:
        """Every project, by name."""
        try:
            async with self._db.connection() as conn:
                cur = await conn.execute(SELECT_PROJECTS + " order by name")
                rows = await cur.fetchall()
        except psycopg.Error as exc:
            raise _error("read", exc) from exc
        return [project_from_row(r) for r in rows]

    async def update_project(self, project: Project) -> Project:
        """Replace a project's stored fields."""
        try:
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    "update projects set repo_url=%s, default_branch=%s, template=%s,"
                    " variables=%s, credentials=%s, settings=%s, state=%s, updated_at=now()"
                    " where name=%s",
                    (
                        project.repo_url,
                        project.default_branch,
                        project.template,
                        Jsonb(dict(project.variables)),
                        Jsonb(dict(project.credentials)),
                        Jsonb(dict(project.settings)),
                        project.state,
                        project.name,
                    ),
                )
        except psycopg.Error as exc:
            raise _error("update", exc) from exc
        if cur.rowcount == 0:
            raise ProjectNotFoundError(project.name)
        return await self.get_project(project.name)

    async def append_event(self, task_id: str, event: AgentEvent) -> AgentEvent:
        """Store ``event`` as the task's next event.

        A transaction-scoped advisory lock on the task serializes its writers, so the
        ``max(seq) + 1`` read and the insert cannot interleave (dense, no duplicate).
        """
        try:
            async with self._db.connection() as conn, conn.transaction():
                # Separate statements: under READ COMMITTED each statement gets a fresh
                # snapshot, so the max is read only after the lock is held.
                await conn.execute(
                    "select pg_advisory_xact_lock(hashtextextended(%s, 0))", (task_id,)
                )
                cur = await conn.execute(
                    "select coalesce(max(seq), 0) from task_events where task_id = %s", (task_id,)
                )
                row = await cur.fetchone()
                numbered = event.numbered((row[0] if row else 0) + 1, task_id)
                await conn.execute(
                    "insert into task_events (task_id, seq, type, body) values (%s,%s,%s,%s)",
                    (task_id, numbered.seq, numbered.type, event_body(numbered.to_dict())),
                )
        except psycopg.Error as exc:
            raise _error("append", exc) from exc
        self._signals.notify(task_id)
        return numbered

    async def list_events(
        self, task_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> Sequence[StoredEvent]:
        """Events of the task with ``seq > after_seq``, in order."""
        try:
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    "select seq, type, body from task_events where task_id = %s and seq > %s"
                    " order by seq limit %s",
                    (task_id, after_seq, limit),
                )
                rows = await cur.fetchall()
        except psycopg.Error as exc:
            raise _error("read", exc) from exc
        return [StoredEvent(seq=r[0], type=r[1], body=r[2]) for r in rows]

    async def last_event(self, task_id: str) -> StoredEvent | None:
        """The task's newest event, or None."""
        try:
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    "select seq, type, body from task_events where task_id = %s"
                    " order by seq desc limit 1",
                    (task_id,),
                )
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise _error("read", exc) from exc
        return None if row is None else StoredEvent(seq=row[0], type=row[1], body=row[2])

    async def wait_for_events(self, task_id: str, after_seq: int, timeout_s: float) -> None:
        """Return on an in-process append to the task, or after a short poll interval."""
        await self._signals.wait(task_id, timeout_s)

    async def add_token(self, token_id: str, name: str, token_hash: str, role: str) -> ApiToken:
        """Record a new API token by its hash."""
        try:
            async with self._db.connection() as conn:
                await conn.execute(
                    "insert into api_tokens (id, name, token_hash, role) values (%s,%s,%s,%s)",
                    (token_id, name, token_hash, role),
                )
        except psycopg.Error as exc:
            raise _error("insert", exc) from exc
        return ApiToken(id=token_id, name=name, role=role, created_at=utcnow())

    async def find_token(self, token_hash: str) -> ApiToken | None:
        """The token with that hash, marked used now; or None."""
        try:
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    "update api_tokens set last_used_at = now() where token_hash = %s"
                    " returning id, name, role, created_at, last_used_at",
                    (token_hash,),
                )
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise _error("read", exc) from exc
        if row is None:
            return None
        return ApiToken(
            id=row[0],
            name=row[1],
            role=row[2],
            created_at=parse_time(row[3]) or utcnow(),
            last_used_at=parse_time(row[4]),
        )

    async def count_tokens(self) -> int:
        """How many API tokens exist."""
        try:
            async with self._db.connection() as conn:
                cur = await conn.execute("select count(*) from api_tokens")
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise _error("read", exc) from exc
        return int(row[0]) if row else 0

    async def aclose(self) -> None:
        """Nothing of its own to release."""
