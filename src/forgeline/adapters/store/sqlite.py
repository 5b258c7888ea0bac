"""The Store on SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

from forgeline.adapters.sql.database import SqliteDatabase
from forgeline.adapters.store.notify import AppendNotifier, Watch
from forgeline.adapters.store.rows import (
    SELECT_PROJECTS,
    event_body,
    format_time,
    parse_time,
    project_from_row,
    to_json,
)
from forgeline.domain.agent import AgentEvent, utcnow
from forgeline.domain.errors import ProjectExistsError, ProjectNotFoundError, StorageError
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
                " credentials, settings, state, created_at, updated_at)"
                " values (?,?,?,?,?,?,?,?,?,?)",
                (
                    project.name,
                    project.repo_url,
                    project.default_branch,
                    project.template,
                    to_json(project.variables),
                    to_json(project.credentials),
                    to_json(project.settings),
                    project.state,
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

    async def list_projects(self) -> list[Project]:
        """Every project, by name."""
        rows = await self._read(lambda c: c.execute(SELECT_PROJECTS + " order by name").fetchall())
        return [project_from_row(r) for r in rows]

    async def update_project(self, project: Project) -> Project:
        """Replace a project's stored fields."""

        def update(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "update projects set repo_url=?, default_branch=?, template=?, variables=?,"
                " credentials=?, settings=?, state=?, updated_at=? where name=?",
                (
                    project.repo_url,
                    project.default_branch,
                    project.template,
                    to_json(project.variables),
                    to_json(project.credentials),
                    to_json(project.settings),
                    project.state,
                    format_time(utcnow()),
                    project.name,
                ),
            )
            return cur.rowcount

        if not await self._write(update):
            raise ProjectNotFoundError(project.name)
        return await self.get_project(project.name)

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

    async def add_token(self, token_id: str, name: str, token_hash: str, role: str) -> ApiToken:
        """Record a new API token by its hash."""
        now = utcnow()
        await self._write(
            lambda c: c.execute(
                "insert into api_tokens (id, name, token_hash, role, created_at)"
                " values (?,?,?,?,?)",
                (token_id, name, token_hash, role, format_time(now)),
            )
        )
        return ApiToken(id=token_id, name=name, role=role, created_at=now)

    async def find_token(self, token_hash: str) -> ApiToken | None:
        """The token with that hash, marked used now; or None."""
        now = format_time(utcnow())

        def find(conn: sqlite3.Connection) -> tuple[str, str, str, str] | None:
            row = conn.execute(
                "update api_tokens set last_used_at = ? where token_hash = ?"
                " returning id, name, role, created_at",
                (now, token_hash),
            ).fetchone()
            return None if row is None else (row[0], row[1], row[2], row[3])

        row = await self._write(find)
        if row is None:
            return None
        return ApiToken(
            id=row[0],
            name=row[1],
            role=row[2],
            created_at=parse_time(row[3]) or utcnow(),
            last_used_at=parse_time(now),
        )

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
