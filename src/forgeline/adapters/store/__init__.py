"""Store adapter: projects, task events and API tokens on SQLite or PostgreSQL."""

from forgeline.adapters.sql.database import Database
from forgeline.adapters.store.sql_store import SqlStore
from forgeline.ports.store import Store


def build_store(db: Database) -> Store:
    """The store on ``db`` (either dialect)."""
    return SqlStore(db)
