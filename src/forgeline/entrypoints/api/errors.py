"""The one place where errors become HTTP answers: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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
    ValidationError,
)

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

log = structlog.get_logger("forgeline.api")


def status_for(exc: ForgelineError) -> int:
    """The HTTP status of a domain error."""
    if isinstance(exc, AuthError):
        return 403 if exc.forbidden else 401
    return next((status for kind, status in _STATUSES if isinstance(exc, kind)), 500)


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The error JSON shape of every route."""
    return {"error": {"code": code, "message": message, **extra}}


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(ForgelineError)
    async def domain_error(request: Request, exc: ForgelineError) -> JSONResponse:
        redactor = getattr(request.app.state, "redactor", None)

        def shown(text: str) -> str:
            return redactor.redact(text) if redactor is not None else text

        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        extra: dict[str, Any] = {}
        problems = getattr(exc, "problems", None)
        if isinstance(problems, dict):
            extra["fields"] = problems
        elif isinstance(exc, ValidationError) and exc.field:
            # The shape of a request validation error's fields, so clients read one shape.
            extra["fields"] = [{"field": exc.field, "message": shown(exc.reason), "type": exc.code}]
        if isinstance(exc, StorageError):
            # Nothing is wrong with the request: the same one (a submit with its
            # Idempotency-Key) may be sent again once the database is back.
            headers = {"Retry-After": str(STORAGE_RETRY_AFTER_S)}
            extra["retry_after_s"] = STORAGE_RETRY_AFTER_S
        return JSONResponse(
            status_code=status_for(exc),
            content=error_body(exc.code, shown(exc.message), **extra),
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(
                status_code=400,
                content=error_body("malformed_json", "the request body is not valid JSON"),
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
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            status_code=exc.status_code,
            content=error_body(code, str(exc.detail)),
            headers=getattr(exc, "headers", None),
        )
