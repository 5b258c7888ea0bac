"""Named SQL queries, procrastinate style: one ``.sql`` file per dialect, read once.

A file holds blocks introduced by ``-- name: <query_name>``; the comment lines right after
the name document the query and are dropped from its text.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@functools.cache
def load(dialect: str) -> dict[str, str]:
    """The queries of ``sql/<dialect>_queries.sql`` by name (cached: read once per process)."""
    text = (resources.files("forgeline.adapters.queue.sql") / f"{dialect}_queries.sql").read_text(
        encoding="utf-8"
    )
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = body.strip().splitlines()
        while lines and lines[0].lstrip().startswith("--"):
            lines.pop(0)
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in {dialect}_queries.sql")
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries
