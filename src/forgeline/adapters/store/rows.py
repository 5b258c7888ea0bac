"""Row ↔ domain conversions shared by the SQLite and PostgreSQL stores."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from forgeline.domain.clock import utcnow
from forgeline.domain.project import Project
from forgeline.ports.store import ApiToken


def to_json(value: Mapping[str, Any]) -> str:
    """Compact JSON for a stored object."""
    return json.dumps(dict(value), separators=(",", ":"), sort_keys=True)


def from_json(value: Any) -> dict[str, Any]:
    """A stored JSON object (text on SQLite, already decoded jsonb on PostgreSQL)."""
    if isinstance(value, str):
        loaded: dict[str, Any] = json.loads(value)
        return loaded
    return dict(value or {})


def parse_time(value: Any) -> datetime | None:
    """A stored timestamp as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_time(value: datetime) -> str:
    """A timestamp as SQLite stores it: ISO 8601 UTC with microseconds (sorts as text)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: Every project column, in the order ``project_from_row`` reads them.
SELECT_PROJECTS = (
    "select name, repo_url, default_branch, template, variables, credentials, settings, state,"
    " created_at, updated_at, default_provider, default_model from projects"
)


def project_from_row(row: Any) -> Project:
    """A ``projects`` row (in SELECT_PROJECTS order) as a Project."""
    return Project(
        name=row[0],
        repo_url=row[1],
        default_branch=row[2],
        template=row[3],
        variables=from_json(row[4]),
        credentials=from_json(row[5]),
        settings=from_json(row[6]),
        state=row[7],
        created_at=parse_time(row[8]),
        updated_at=parse_time(row[9]),
        default_provider=row[10],
        default_model=row[11],
    )


#: Every token column, in the order ``token_from_row`` reads them.
SELECT_TOKENS = "select id, name, role, created_at, last_used_at, projects from api_tokens"


def token_from_row(row: Any) -> ApiToken:
    """An ``api_tokens`` row (in SELECT_TOKENS order) as an ApiToken; its project list is
    JSON text on SQLite, decoded jsonb on PostgreSQL."""
    projects = row[5]
    if isinstance(projects, str):
        projects = json.loads(projects)
    return ApiToken(
        id=row[0],
        name=row[1],
        role=row[2],
        created_at=parse_time(row[3]) or utcnow(),
        last_used_at=parse_time(row[4]),
        projects=None if projects is None else tuple(str(name) for name in projects),
    )


def event_body(event_dict: Mapping[str, Any]) -> str:
    """The stored text of an event: its public JSON."""
    return json.dumps(dict(event_dict), separators=(",", ":"), ensure_ascii=False)
