"""Field types of the API's models: every string and free-form JSON field a client sends
passes the domain's input rules (:mod:`forgeline.domain.inputs`), so a bad one is a 422
naming it, before anything is stored; and every one carries the same rule into
``/openapi.json`` as a ``pattern`` and its limits, so a client (or a fuzzer) knows in
advance what the server takes.

The patterns are documentation of checks made elsewhere (here, or by the services for
names), written from the same definitions, never a second implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationInfo, WithJsonSchema
from pydantic_core import PydanticCustomError

from forgeline.domain.errors import ValidationError
from forgeline.domain.inputs import (
    LINE,
    MAX_JSON_CHARS,
    MAX_JSON_DEPTH,
    TEXT,
    TEXT_CRLF,
    check_json,
    check_text,
    text_pattern,
)
from forgeline.domain.project import MAX_PROJECT_NAME, PROJECT_NAME_PATTERN
from forgeline.domain.secrets import CREDENTIAL_NAME_PATTERN, ENV_VAR_PATTERN
from forgeline.domain.task import MAX_PROMPT_CHARS

#: Longest name or identifier a request may carry (template, provider, model, session id).
MAX_NAME_CHARS = 256
#: Longest credential name (:func:`forgeline.domain.secrets.validate_credential_name`).
MAX_CREDENTIAL_NAME = 128
#: Longest secret value, in characters.
MAX_SECRET_CHARS = 64 * 1024
#: Longest URL (callback, repository).
MAX_URL_CHARS = 2048

#: A task id: a UUID as the queue makes them.
TASK_ID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
#: An API token's id (not the token).
TOKEN_ID_PATTERN = "^[0-9a-f]{32}$"  # noqa: S105 - a pattern, not a secret


def anchored(pattern: str) -> str:
    """``pattern`` (written for ``re.fullmatch``) as a JSON Schema pattern."""
    return f"^(?:{pattern})$"


def _rule(check: Callable[..., Any], **options: Any) -> AfterValidator:
    """A pydantic validator running a domain check; its ``ValidationError`` becomes a
    field error of the request (422 with the field's location)."""

    def validate(value: Any, info: ValidationInfo) -> Any:
        field = info.field_name or "value"
        try:
            return check(value, field=field, **options)
        except ValidationError as exc:
            # The error's location names the field already; a deeper part is named here.
            at = f" (at {exc.field})" if exc.field and exc.field != field else ""
            message = f"{exc.reason}{at}"
            raise PydanticCustomError(exc.code, message) from exc

    return AfterValidator(validate)


def _pattern(pattern: str) -> dict[str, Any]:
    return {"pattern": pattern}


#: A name or identifier: no control character at all.
Name = Annotated[
    str,
    Field(min_length=1, max_length=MAX_NAME_CHARS, json_schema_extra=_pattern(text_pattern(LINE))),
    _rule(check_text, allow=LINE),
]
#: A prompt: something besides whitespace; tab, newline and carriage return are its only
#: control characters (blank prompts are refused by the build spec itself).
Prompt = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        json_schema_extra=_pattern(text_pattern(TEXT_CRLF, blank=False)),
    ),
    _rule(check_text, allow=TEXT_CRLF),
]
#: A secret value: multi-line (a PEM key) but never NUL, which no environment can carry.
SecretValue = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_SECRET_CHARS,
        json_schema_extra=_pattern(text_pattern(TEXT_CRLF)),
    ),
    _rule(check_text, allow=TEXT_CRLF),
]
#: A URL (callback, repository): no control character, and a length no real URL needs.
Url = Annotated[
    str,
    Field(max_length=MAX_URL_CHARS, json_schema_extra=_pattern(text_pattern(LINE))),
    _rule(check_text, allow=LINE),
]
#: A project name: control characters are refused here, the rest of the rule by the
#: project service, whose error says it.
ProjectName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PROJECT_NAME,
        json_schema_extra=_pattern(anchored(PROJECT_NAME_PATTERN)),
    ),
    _rule(check_text, allow=LINE),
]
#: A credential name (the rest of its rule: the credential store's).
CredentialName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_CREDENTIAL_NAME,
        json_schema_extra=_pattern(anchored(CREDENTIAL_NAME_PATTERN)),
    ),
    _rule(check_text, allow=LINE),
]
#: An environment variable a build receives a credential in (the rest: the project's).
EnvVar = Annotated[
    str,
    Field(json_schema_extra=_pattern(anchored(ENV_VAR_PATTERN))),
    _rule(check_text, allow=LINE),
]

#: What a free-form JSON field may hold, as far as JSON Schema says it: string keys and
#: strings free of control characters but tab and newline, finite numbers; nesting and
#: size are bounded too (see the description).
_JSON_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": f"plain JSON, at most {MAX_JSON_DEPTH} levels deep and {MAX_JSON_CHARS}"
    " characters as JSON text; strings (keys too) without control characters but tab and"
    " newline (none in keys)",
    "propertyNames": _pattern(text_pattern(LINE)),
    "additionalProperties": {
        "anyOf": [
            {"type": "string", **_pattern(text_pattern(TEXT))},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "null"},
            {"type": "array", "items": {}},
            {"type": "object", "additionalProperties": True},
        ]
    },
}
#: A free-form JSON object, bounded in depth and size, its strings free of control characters.
JsonObject = Annotated[dict[str, Any], WithJsonSchema(_JSON_OBJECT_SCHEMA), _rule(check_json)]
