"""Work queue adapters: SQLite (one machine, the default) and PostgreSQL (many machines)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forgeline.adapters.queue.postgres import PostgresWorkQueue
    from forgeline.adapters.queue.sqlite import SqliteWorkQueue
    from forgeline.adapters.sql.database import Database


def build_queue(db: Database) -> SqliteWorkQueue | PostgresWorkQueue:
    """The work queue on the process's shared database handle (composition root)."""
    from forgeline.adapters.sql.database import SqliteDatabase

    if isinstance(db, SqliteDatabase):
        from forgeline.adapters.queue.sqlite import SqliteWorkQueue

        return SqliteWorkQueue(db)
    from forgeline.adapters.queue.postgres import PostgresWorkQueue

    return PostgresWorkQueue(db)
