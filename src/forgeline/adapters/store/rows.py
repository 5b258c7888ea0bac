"""Row → domain conversions of the store (rows by column name, either dialect)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from forgeline.adapters.sql.executor import parse_json, parse_optional_time, parse_time
from forgeline.domain.project import Project
from forgeline.ports.store import ApiToken


def project_from_row(row: Mapping[str, Any]) -> Project:
    """A ``projects`` row as a Project."""
    return Project(
        name=row["name"],
        repo_url=row["repo_url"],
        default_branch=row["default_branch"],
        template=row["template"],
        variables=dict(parse_json(row["variables"]) or {}),
        credentials=dict(parse_json(row["credentials"]) or {}),
        settings=dict(parse_json(row["settings"]) or {}),
        state=row["state"],
        created_at=parse_optional_time(row["created_at"]),
        updated_at=parse_optional_time(row["updated_at"]),
        default_provider=row["default_provider"],
        default_model=row["default_model"],
    )


def token_from_row(row: Mapping[str, Any]) -> ApiToken:
    """An ``api_tokens`` row as an ApiToken (``projects`` null: every project)."""
    projects = parse_json(row["projects"])
    return ApiToken(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        created_at=parse_time(row["created_at"]),
        last_used_at=parse_optional_time(row["last_used_at"]),
        projects=None if projects is None else tuple(str(name) for name in projects),
    )


def event_body(event_dict: Mapping[str, Any]) -> str:
    """The stored text of an event: its public JSON."""
    return json.dumps(dict(event_dict), separators=(",", ":"), ensure_ascii=False)
