"""Field types of the request models: every string and free-form JSON field a client sends
passes the domain's input rules (:mod:`forgeline.domain.inputs`), so a bad one is a 422
naming it, before anything is stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from forgeline.domain.errors import ValidationError
from forgeline.domain.inputs import LINE, TEXT_CRLF, check_json, check_text
from forgeline.domain.task import MAX_PROMPT_CHARS

#: Longest name or identifier a request may carry (template, provider, model, session id).
MAX_NAME_CHARS = 256


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


#: A name or identifier: no control character at all.
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS), _rule(check_text, allow=LINE)]
#: A prompt: tab, newline and carriage return are its only control characters.
Prompt = Annotated[
    str, Field(min_length=1, max_length=MAX_PROMPT_CHARS), _rule(check_text, allow=TEXT_CRLF)
]
#: A secret value: multi-line (a PEM key) but never NUL, which no environment can carry.
SecretValue = Annotated[
    str, Field(min_length=1, max_length=64 * 1024), _rule(check_text, allow=TEXT_CRLF)
]
#: A free-form JSON object, bounded in depth and size, its strings free of control characters.
JsonObject = Annotated[dict[str, Any], _rule(check_json)]
#: A URL (callback, repository): no control character, and a length no real URL needs.
Url = Annotated[str, Field(max_length=2048), _rule(check_text, allow=LINE)]
