"""What every dashboard page shares: the templates, the signed-in viewer, CSRF checks,
security headers, and errors shown as pages.

Every answer of a dashboard route passes through :class:`PageRoute`, which adds the
security headers (a strict ``Content-Security-Policy``: scripts, styles and connections
from this origin only, no inline script, no framing) and turns errors into pages: a
missing or dead session into a redirect to the sign-in form, a domain error into an error
page with the status the API would give (:func:`~forgeline.entrypoints.api.errors.status_for`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import pydantic
from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from forgeline.bootstrap import Container
from forgeline.domain.clock import utcnow
from forgeline.domain.errors import AuthError, ForgelineError
from forgeline.entrypoints.api.errors import status_for
from forgeline.entrypoints.api.routes import container_of
from forgeline.ports.store import ApiToken
from forgeline.services.auth import AuthService, Role
from forgeline.services.sessions import SESSION_COOKIE

#: Where the dashboard lives.
PREFIX = "/ui"
#: A random per-browser value that forms are bound to before sign-in (see
#: :mod:`forgeline.services.sessions`).
CSRF_COOKIE = "forgeline_csrf"
#: The form field holding the CSRF token.
CSRF_FIELD = "csrf_token"

#: Sent with every page: nothing but this origin's own files runs, loads or is framed.
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Pages show builds, prompts and credentials' names: no shared cache may keep them.
    "Cache-Control": "no-store",
}

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SignInRequired(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The request has no live session: answer with the sign-in form."""


class CsrfError(AuthError):
    """A state-changing form came without the CSRF token of this browser's session (403)."""

    code = "csrf"

    def __init__(self) -> None:
        super().__init__(
            "this form has expired or was sent from another site: reload the page and try again",
            forbidden=True,
        )


def _ago(moment: datetime | None) -> str:
    """``3 min ago``: how long before now ``moment`` was."""
    if moment is None:
        return "—"
    seconds = int((utcnow() - moment).total_seconds())
    if seconds < 60:
        return f"{max(seconds, 0)} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def _duration(start: datetime | None, end: datetime | None) -> str:
    """``1 min 5 s`` between ``start`` and ``end`` (now while running)."""
    if start is None:
        return "—"
    seconds = int(((end or utcnow()) - start).total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _when(moment: datetime | None) -> str:
    """A moment as RFC 3339 in UTC to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else "—"


def _money(value: Any) -> str:
    """A cost in US dollars, or a dash when unknown."""
    return f"${value:.4f}" if isinstance(value, int | float) and value else "—"


def _make_templates() -> Environment:
    # Autoescape everything: every string a page shows may come from an agent, a prompt or
    # a request. StrictUndefined: a misspelt name fails the test, not the page silently.
    env = Environment(
        loader=PackageLoader("forgeline.entrypoints.ui", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ago=_ago, duration=_duration, when=_when, money=_money)
    return env


templates = _make_templates()


def csrf_binding(request: Request) -> str:
    """What this browser's CSRF token is bound to: its session cookie once signed in,
    else its pre-sign-in cookie ("" when it has neither)."""
    return request.cookies.get(SESSION_COOKIE) or request.cookies.get(CSRF_COOKIE) or ""


def render(
    request: Request,
    name: str,
    *,
    viewer: ApiToken | None = None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """The page ``name`` for ``viewer``, with the CSRF token its forms carry."""
    container = container_of(request)
    binding = csrf_binding(request)
    new_binding = None
    if not binding:
        # A first visit: bind its forms to a fresh random cookie (set below).
        binding = new_binding = secrets.token_urlsafe(32)
    html = templates.get_template(name).render(
        viewer=viewer,
        is_admin=viewer is not None and viewer.role == Role.ADMIN,
        csrf_token=container.sessions.csrf_token(binding),
        csrf_field=CSRF_FIELD,
        prefix=PREFIX,
        **context,
    )
    response = HTMLResponse(html, status_code=status_code)
    if new_binding is not None:
        set_csrf_cookie(request, response, new_binding)
    return response


def set_csrf_cookie(request: Request, response: Response, value: str) -> None:
    """Bind this browser's forms to ``value`` until it signs in."""
    response.set_cookie(
        CSRF_COOKIE,
        value,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def _viewer(request: Request) -> ApiToken:
    """The signed-in token, checked through :class:`AuthService` on every request."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise SignInRequired
    try:
        return await container_of(request).sessions.check(cookie)
    except AuthError:
        raise SignInRequired from None


async def _admin(viewer: Annotated[ApiToken, Depends(_viewer)]) -> ApiToken:
    """The signed-in token if it may administer forgeline (a 403 page otherwise)."""
    AuthService.require(viewer, Role.ADMIN)
    return viewer


Viewer = Annotated[ApiToken, Depends(_viewer)]
Admin = Annotated[ApiToken, Depends(_admin)]
ContainerDep = Annotated[Container, Depends(container_of)]


async def csrf_guard(request: Request) -> None:
    """Refuse a state-changing request whose form lacks this browser's CSRF token (every
    dashboard route has this dependency, so no form can be added without it)."""
    if request.method in _SAFE_METHODS:
        return
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    if not isinstance(sent, str) or not container_of(request).sessions.csrf_valid(
        csrf_binding(request), sent
    ):
        raise CsrfError


class PageRoute(APIRoute):
    """A dashboard route: security headers on every answer, errors shown as pages."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The route's handler, wrapped."""
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired:
                response = RedirectResponse(f"{PREFIX}/login", status_code=303)
                response.delete_cookie(SESSION_COOKIE, path="/")
            except ForgelineError as exc:
                response = _error_page(request, status_for(exc), exc.message)
            except (RequestValidationError, pydantic.ValidationError) as exc:
                # A form field the API's own request model refused.
                fields = "; ".join(
                    f"{e.get('loc', ('?',))[-1]}: {e.get('msg', '')}" for e in exc.errors()
                )
                response = _error_page(request, 422, fields or "the form is not valid")
            response.headers.update(SECURITY_HEADERS)
            return response

        return page


def _error_page(request: Request, status: int, message: str) -> HTMLResponse:
    redactor = container_of(request).redactor
    return render(
        request, "error.html", status_code=status, status=status, message=redactor.redact(message)
    )
