"""Killing a test database's server processes, as a PostgreSQL restart or a dropped
connection would (the shared server itself is never stopped)."""

from __future__ import annotations

import psycopg


def terminate_backends(url: str, *, listeners_only: bool = False) -> int:
    """Kill every server process connected to ``url``'s database, or only those whose last
    statement was a LISTEN (a listening connection younger than its health check); how many."""
    name = url.rsplit("/", 1)[1]
    base = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(base, autocommit=True) as conn:
        rows = conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where datname = %s and pid <> pg_backend_pid()"
            " and (not %s or query ilike 'listen%%')",
            (name, listeners_only),
        ).fetchall()
    return len(rows)
