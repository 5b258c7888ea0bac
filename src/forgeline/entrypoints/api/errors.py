"""The one place where errors become HTTP answers: ``{"error": {"code", "message"}}``
(:class:`~forgeline.entrypoints.api.schemas.ErrorEnvelope`), and where routes say which
of them they can answer with (:func:`errors`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Route

from forgeline.domain.errors import (
    AgentUnavailableError,
    AuthError,
    CapacityError,
    ConflictError,
    CredentialError,
    ExternalServiceError,
    ForgelineError,
    MissingCredentialsError,
    NotFoundError,
    RemoteUnavailableError,
    StorageError,
    TemplateVariablesError,
    ValidationError,
)
from forgeline.entrypoints.api.schemas import ErrorEnvelope

#: Domain error → HTTP status, most specific first. 424 (Failed Dependency): the request
#: is sound but needs something known and unavailable now (an agent's program, a remote,
#: a credential the project declares); it may succeed once that is fixed.
_STATUSES: tuple[tuple[type[ForgelineError], int], ...] = (
    (AgentUnavailableError, 424),
    (MissingCredentialsError, 424),
    (RemoteUnavailableError, 424),
    (ValidationError, 422),
    (NotFoundError, 404),
    (ConflictError, 409),
    (CapacityError, 429),
    (StorageError, 503),
    (ExternalServiceError, 502),
    (CredentialError, 500),
)


#: Seconds a client is told to wait (``Retry-After``) when the database is unavailable.
STORAGE_RETRY_AFTER_S = 2
#: ... and when a project's queue is full: about the time a short build takes.
CAPACITY_RETRY_AFTER_S = 30

#: What each error status means, as every route that can answer with it documents it.
_MEANINGS: dict[int, str] = {
    400: "the body is not valid JSON",
    401: "no valid API token (`Authorization: Bearer <token>`)",
    403: "the token may not do this (a builder token, or one limited to other projects)",
    404: "no such resource (or none this token may see)",
    405: "the path does not take this method (`Allow` lists those it takes)",
    409: "the resource's state does not allow it (a final task, a project that exists"
    " or has builds running)",
    413: "the body is larger than FORGELINE_MAX_BODY_BYTES",
    415: "the body is not sent as `Content-Type: application/json`",
    422: "the request is refused for its content; `fields` names the fields at fault",
    424: "something the request needs is unavailable now (an agent's program, a remote, a"
    " credential the project declares)",
    429: "the project's queue is full; retry after `Retry-After` seconds",
    500: "a bug; the server's log has the details",
    502: "a service forgeline talks to answered badly",
    503: "the database is unavailable; retry after `Retry-After` seconds",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "required": True,
        "schema": {"type": "integer"},
    }
}

log = structlog.get_logger("forgeline.api")


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these error statuses, each with the error envelope."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        documented[status] = {"model": ErrorEnvelope, "description": _MEANINGS[status]}
        if status in (429, 503):
            documented[status]["headers"] = _RETRY_AFTER
    return documented


def status_for(exc: ForgelineError) -> int:
    """The HTTP status of a domain error."""
    if isinstance(exc, AuthError):
        return 403 if exc.forbidden else 401
    return next((status for kind, status in _STATUSES if isinstance(exc, kind)), 500)


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The error JSON shape of every route."""
    return {"error": {"code": code, "message": message, **extra}}


def _fields(exc: ForgelineError, shown: Any) -> list[dict[str, str]] | None:
    """The ``fields`` of an error, in the one shape a request validation error has."""
    if isinstance(exc, TemplateVariablesError):
        return [
            {"field": f"variables.{name}", "message": shown(why), "type": exc.code}
            for name, why in sorted(exc.problems.items())
        ]
    if isinstance(exc, ValidationError) and exc.field:
        return [{"field": exc.field, "message": shown(exc.reason), "type": exc.code}]
    return None


def install(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """Register the handlers on ``app``, whose routes are ``routes``."""
    methods_at = _allowed_methods(routes)

    @app.exception_handler(ForgelineError)
    async def domain_error(request: Request, exc: ForgelineError) -> JSONResponse:
        redactor = getattr(request.app.state, "redactor", None)

        def shown(text: str) -> str:
            return redactor.redact(text) if redactor is not None else text

        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        extra: dict[str, Any] = {}
        fields = _fields(exc, shown)
        if fields is not None:
            extra["fields"] = fields
        retry_after = (
            STORAGE_RETRY_AFTER_S
            if isinstance(exc, StorageError)
            else CAPACITY_RETRY_AFTER_S
            if isinstance(exc, CapacityError)
            else None
        )
        if retry_after is not None:
            # Nothing is wrong with the request: the same one (a submit with its
            # Idempotency-Key) may be sent again later.
            headers = {"Retry-After": str(retry_after)}
            extra["retry_after_s"] = retry_after
        return JSONResponse(
            status_code=status_for(exc),
            content=error_body(exc.code, shown(exc.message), **extra),
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(
                status_code=400,
                content=error_body("malformed_json", "the request body is not valid JSON"),
            )
        content_type = request.headers.get("content-type", "")
        # FastAPI hands a body of another type on as bytes, which no model takes: say what
        # is wrong (curl -d sends a form) instead of "not a valid object".
        if (
            content_type
            and "json" not in content_type.lower()
            and any(tuple(e.get("loc", ())) == ("body",) for e in errors)
        ):
            return JSONResponse(
                status_code=415,
                content=error_body(
                    "unsupported_media_type",
                    "the body must be JSON sent as Content-Type: application/json, not"
                    f" {content_type[:100]!r}",
                ),
            )
        fields = [
            {
                "field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"),
                "message": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in errors
        ]
        summary = "; ".join(f"{f['field'] or 'body'}: {f['message']}" for f in fields)
        return JSONResponse(status_code=422, content=error_body("invalid", summary, fields=fields))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # A bug: log it whole, answer in the API's shape without its details.
        log.error("api.unexpected_error", error_type=type(exc).__name__, exc_info=exc)
        return JSONResponse(
            status_code=500, content=error_body("internal", "internal error; see the server log")
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error"
        )
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path; a path
            # served by several routes (GET and POST /projects) takes all of theirs.
            headers["Allow"] = ", ".join(sorted(methods_at(request.url.path)))
        return JSONResponse(
            status_code=exc.status_code, content=error_body(code, str(exc.detail)), headers=headers
        )


def _allowed_methods(routes: Sequence[BaseRoute]) -> Callable[[str], set[str]]:
    """For a path: every method some of ``routes`` takes there."""
    compiled = [
        (route.path_regex, set(route.methods or ())) for route in routes if isinstance(route, Route)
    ]

    def methods(path: str) -> set[str]:
        return {m for regex, taken in compiled if regex.match(path) for m in taken}

    return methods
