"""The Store on SQLite."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

from forgeline.adapters.sql.database import SqliteDatabase
from forgeline.adapters.store.notify import AppendNotifier, Watch
from forgeline.adapters.store.rows import (
    SELECT_PROJECTS,
    SELECT_TOKENS,
    event_body,
    format_time,
    project_from_row,
    to_json,
    token_from_row,
)
from forgeline.domain.agent import AgentEvent
from forgeline.domain.clock import utcnow
from forgeline.domain.errors import (
    ProjectExistsError,
    ProjectNotFoundError,
    StorageError,
    TokenNotFoundError,
)
from forgeline.domain.project import Project
from forgeline.ports.store import ApiToken, AppendWatch, OnAppend, StoredEvent

T = TypeVar("T")


class SqliteStore:
    """Projects, task events and API tokens in the embedded SQLite database."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        self._appended = AppendNotifier()

    async def create_project(self, project: Project) -> Project:
        """Insert a project; ``ProjectExistsError`` if the name is taken."""
        now = utcnow()

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "insert into projects (name, repo_url, default_branch, template, variables,"
                " credentials, settings, state, default_provider, default_model, created_at,"
                " updated_at) values (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    project.name,
                    project.repo_url,
                    project.default_branch,
                    project.template,
                    to_json(project.variables),
                    to_json(project.credentials),
                    to_json(project.settings),
                    project.state,
                    project.default_provider,
                    project.default_model,
                    format_time(now),
                    format_time(now),
                ),
            )

        try:
            await self._db.write(insert)
        except sqlite3.IntegrityError as exc:
            raise ProjectExistsError(project.name) from exc
        except sqlite3.Error as exc:
            raise StorageError(f"cannot create project: {exc}") from exc
        return await self.get_project(project.name)

    async def get_project(self, name: str) -> Project:
        """The project, or ``ProjectNotFoundError``."""
        row = await self._read(
            lambda c: c.execute(SELECT_PROJECTS + " where name = ?", (name,)).fetchone()
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
        clauses: list[str] = []
        params: list[object] = []
        if after is not None:
            clauses.append("name > ?")
            params.append(after)
        if names is not None:
            clauses.append("name in (select value from json_each(?))")
            params.append(json.dumps(list(names)))
        sql = SELECT_PROJECTS + (" where " + " and ".join(clauses) if clauses else "")
        sql += " order by name limit ?"
        params.append(-1 if limit is None else limit)
        rows = await self._read(lambda c: c.execute(sql, params).fetchall())
        return [project_from_row(r) for r in rows]

    async def update_project(self, project: Project) -> Project:
        """Replace a project's stored fields."""

        def update(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "update projects set repo_url=?, default_branch=?, template=?, variables=?,"
                " credentials=?, settings=?, state=?, default_provider=?, default_model=?,"
                " updated_at=? where name=?",
                (
                    project.repo_url,
                    project.default_branch,
                    project.template,
                    to_json(project.variables),
                    to_json(project.credentials),
                    to_json(project.settings),
                    project.state,
                    project.default_provider,
                    project.default_model,
                    format_time(utcnow()),
                    project.name,
                ),
            )
            return cur.rowcount

        if not await self._write(update):
            raise ProjectNotFoundError(project.name)
        return await self.get_project(project.name)

    async def delete_project(self, name: str) -> None:
        """Remove a project and its agent sessions."""

        def delete(conn: sqlite3.Connection) -> int:
            conn.execute("delete from agent_sessions where project = ?", (name,))
            return conn.execute("delete from projects where name = ?", (name,)).rowcount

        if not await self._write(delete):
            raise ProjectNotFoundError(name)

    async def record_session(
        self, project: str, provider: str, session_id: str, task_id: str
    ) -> None:
        """Remember the newest session of ``provider`` in ``project``."""
        await self._write(
            lambda c: c.execute(
                "insert into agent_sessions (project, provider, session_id, task_id, recorded_at)"
                " values (?,?,?,?,?) on conflict (project, provider) do update set"
                " session_id = excluded.session_id, task_id = excluded.task_id,"
                " recorded_at = excluded.recorded_at",
                (project, provider, session_id, task_id, format_time(utcnow())),
            )
        )

    async def last_session(self, project: str, provider: str) -> str | None:
        """The session last recorded for ``provider`` in ``project``."""
        row = await self._read(
            lambda c: c.execute(
                "select session_id from agent_sessions where project = ? and provider = ?",
                (project, provider),
            ).fetchone()
        )
        return None if row is None else str(row[0])

    async def append_event(self, task_id: str, event: AgentEvent) -> AgentEvent:
        """Store ``event`` as the task's next event (BEGIN IMMEDIATE keeps seq dense)."""

        def insert(conn: sqlite3.Connection) -> tuple[AgentEvent, str]:
            (last,) = conn.execute(
                "select coalesce(max(seq), 0) from task_events where task_id = ?", (task_id,)
            ).fetchone()
            numbered = event.numbered(last + 1, task_id)
            body = event_body(numbered.to_dict())
            conn.execute(
                "insert into task_events (task_id, seq, type, body) values (?,?,?,?)",
                (task_id, numbered.seq, numbered.type, body),
            )
            return numbered, body

        numbered, body = await self._write(insert)
        self._appended.appended(task_id, StoredEvent(numbered.seq, numbered.type, body))
        return numbered

    async def list_events(
        self, task_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> Sequence[StoredEvent]:
        """Events of the task with ``seq > after_seq``, in order."""
        rows = await self._read(
            lambda c: c.execute(
                "select seq, type, body from task_events where task_id = ? and seq > ?"
                " order by seq limit ?",
                (task_id, after_seq, limit),
            ).fetchall()
        )
        return [StoredEvent(seq=r[0], type=r[1], body=r[2]) for r in rows]

    async def last_event(self, task_id: str) -> StoredEvent | None:
        """The task's newest event, or None."""
        row = await self._read(
            lambda c: c.execute(
                "select seq, type, body from task_events where task_id = ?"
                " order by seq desc limit 1",
                (task_id,),
            ).fetchone()
        )
        return None if row is None else StoredEvent(seq=row[0], type=row[1], body=row[2])

    async def watch_appends(self, on_append: OnAppend) -> AppendWatch:
        """Tell ``on_append`` of this process's appends; never ``live``: SQLite cannot tell
        of another process's writes, a watcher polls for those."""
        return Watch(lambda: False, self._appended.add(on_append))

    async def add_token(
        self,
        token_id: str,
        name: str,
        token_hash: str,
        role: str,
        projects: Sequence[str] | None = None,
    ) -> ApiToken:
        """Record a new API token by its hash."""
        now = utcnow()
        scope = None if projects is None else json.dumps(list(projects))
        await self._write(
            lambda c: c.execute(
                "insert into api_tokens (id, name, token_hash, role, created_at, projects)"
                " values (?,?,?,?,?,?)",
                (token_id, name, token_hash, role, format_time(now), scope),
            )
        )
        return ApiToken(
            id=token_id,
            name=name,
            role=role,
            created_at=now,
            projects=None if projects is None else tuple(projects),
        )

    async def find_token(self, token_hash: str) -> ApiToken | None:
        """The token with that hash, marked used now; or None."""
        now = format_time(utcnow())
        row = await self._write(
            lambda c: c.execute(
                "update api_tokens set last_used_at = ? where token_hash = ?"
                " returning id, name, role, created_at, last_used_at, projects",
                (now, token_hash),
            ).fetchone()
        )
        return None if row is None else token_from_row(row)

    async def list_tokens(self) -> list[ApiToken]:
        """Every API token, oldest first."""
        rows = await self._read(
            lambda c: c.execute(SELECT_TOKENS + " order by created_at, id").fetchall()
        )
        return [token_from_row(row) for row in rows]

    async def delete_token(self, token_id: str) -> None:
        """Revoke a token for good."""
        deleted = await self._write(
            lambda c: c.execute("delete from api_tokens where id = ?", (token_id,)).rowcount
        )
        if not deleted:
            raise TokenNotFoundError(token_id)

    async def count_tokens(self) -> int:
        """How many API tokens exist."""
        (count,) = await self._read(
            lambda c: c.execute("select count(*) from api_tokens").fetchone()
        )
        return int(count)

    async def aclose(self) -> None:
        """Nothing of its own to release."""

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.read(fn)
        except sqlite3.Error as exc:
            raise StorageError(f"store read failed: {exc}") from exc

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.write(fn)
        except sqlite3.Error as exc:
            raise StorageError(f"store write failed: {exc}") from exc
