"""Named SQL queries, procrastinate style: one ``.sql`` file per store and dialect, read once.

A file holds blocks introduced by ``-- name: <query_name>``; the comment lines right after
the name document the query and are dropped from its text. The files of a store live in
its package's ``sql`` folder as ``<dialect>_queries.sql`` (``sqlite``, ``postgres``).
"""

from __future__ import annotations

import functools
import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@functools.cache
def load(package: str, dialect: str) -> dict[str, str]:
    """The queries of ``<package>/<dialect>_queries.sql`` by name (read once per process)."""
    file = f"{dialect}_queries.sql"
    text = (resources.files(package) / file).read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = body.strip().splitlines()
        while lines and lines[0].lstrip().startswith("--"):
            lines.pop(0)
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in {package}/{file}")
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries
