"""Store adapters: projects, task events and API tokens on SQLite or PostgreSQL."""

from forgeline.adapters.sql.database import Database, PostgresDatabase
from forgeline.ports.store import Store


def build_store(db: Database) -> Store:
    """The store for the database's dialect."""
    if isinstance(db, PostgresDatabase):
        from forgeline.adapters.store.postgres import PostgresStore

        return PostgresStore(db)
    from forgeline.adapters.store.sqlite import SqliteStore

    return SqliteStore(db)
