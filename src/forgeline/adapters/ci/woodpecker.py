"""The CIProvider over Woodpecker's REST API (v3), on httpx.

What the server does for each call, and the traps, are recorded in
``shared/reference/woodpecker.md``; the rules that follow from it:

* repositories are addressed by Woodpecker's integer ``repo_id``, never ``owner/name`` in a
  path (a non-integer id is a 400); activation takes the forge's ``forge_remote_id``;
* a 409 on activation means "already active", a 403 that the token's user is not admin of
  the repository on the forge;
* secrets need at least one event and are only handed to pipelines of their events, so
  every deploy secret lists ``push`` and ``manual``; creating an existing name fails (500),
  so existing secrets are patched; their values are never read back;
* API-triggered pipelines have the event ``manual``; a 204 without body means the config
  filters left nothing to run;
* pipelines are followed by polling ``GET …/pipelines/{number}`` until a final status.

Errors: every failure is an :class:`ExternalServiceError` with the method, the path, the
status and an excerpt of the body. The token travels only in the ``Authorization`` header
of the shared client and is masked in any body excerpt, so it can reach no message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Final

import httpx
import structlog

from forgeline.domain.backoff import Backoff
from forgeline.domain.errors import ExternalServiceError
from forgeline.domain.secrets import Secret
from forgeline.ports.ci import SECRET_EVENTS, PipelineStatus, PipelineStep, StatusListener

log = structlog.get_logger(__name__)

SERVICE: Final = "woodpecker"
#: Per-request timeouts: connecting to a healthy server is quick; answers may take a while
#: when Woodpecker has to ask the forge (activation, triggering).
DEFAULT_TIMEOUT: Final = httpx.Timeout(30.0, connect=5.0)
#: Longest body excerpt carried by an error.
BODY_EXCERPT: Final = 300
#: Page size and page limit when listing (Woodpecker paginates every list).
_PER_PAGE: Final = 50
_MAX_PAGES: Final = 20
#: Step states that mean the step did not succeed (the pipeline's failing step).
_FAILED_STATES: Final = ("failure", "error", "killed")
#: Idempotent methods may be retried after a read timeout (the request may have been
#: processed); a POST is retried only when it cannot have reached the server.
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})
#: Transport errors after which the request certainly did not reach the handler.
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class WoodpeckerClient:
    """A Woodpecker server, reached with a personal access token.

    ``max_attempts`` bounds every call (first try included); between attempts it waits
    ``backoff_s * 2**n`` capped at ``backoff_max_s``, with jitter so many workers do not
    hammer a recovering server in step. ``poll_interval_s`` paces ``find_pipeline`` and
    ``follow``. Use as an async context manager or call :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str,
        token: Secret,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        max_attempts: int = 4,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        poll_interval_s: float = 3.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._base_url = base_url.rstrip("/")
        self._token = token
        self._max_attempts = max_attempts
        self._backoff = Backoff(backoff_s, backoff_max_s)
        self._poll_interval_s = poll_interval_s
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            headers={
                "Authorization": f"Bearer {token.reveal()}",
                "Accept": "application/json",
            },
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    async def __aenter__(self) -> WoodpeckerClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool; idempotent."""
        await self._client.aclose()

    # --- repositories ---------------------------------------------------------------------

    async def activate(self, repo_full_name: str, *, forge_remote_id: str | None = None) -> int:
        """Find the forge repository and activate it (already active is fine); its id."""
        if forge_remote_id is None:
            forge_remote_id, active_id = await self._forge_repo(repo_full_name)
            if active_id is not None:
                log.info("woodpecker repo already active", repo=repo_full_name)
                return active_id
        response = await self._request(
            "POST",
            "/api/repos",
            params={"forge_remote_id": forge_remote_id},
            ok=(200, 409),
            explain={403: "the token's user is not admin of the repository on the forge"},
        )
        if response.status_code == 409:
            log.info("woodpecker repo already active", repo=repo_full_name)
            return await self.lookup(repo_full_name)
        repo_id = _repo_id(self._json(response, "POST", "/api/repos"), "POST", "/api/repos")
        log.info("woodpecker repo activated", repo=repo_full_name, repo_id=repo_id)
        return repo_id

    async def lookup(self, repo_full_name: str) -> int:
        """The id of an active repository, by ``owner/name``."""
        owner, _, name = repo_full_name.partition("/")
        if not owner or not name:
            raise ExternalServiceError(
                f"repository name must be owner/name, got {repo_full_name!r}", service=SERVICE
            )
        path = f"/api/repos/lookup/{owner}/{name}"
        response = await self._request("GET", path)
        return _repo_id(self._json(response, "GET", path), "GET", path)

    async def _forge_repo(self, repo_full_name: str) -> tuple[str, int | None]:
        """The repository's ``forge_remote_id`` and, when already active, its id."""
        path = "/api/user/repos"
        response = await self._request("GET", path, params={"all": "true"})
        repos = self._json(response, "GET", path)
        if not isinstance(repos, list):
            raise self._garbage("GET", path, response, "expected a list of repositories")
        wanted = repo_full_name.lower()
        for repo in repos:
            if not isinstance(repo, dict) or str(repo.get("full_name", "")).lower() != wanted:
                continue
            remote = repo.get("forge_remote_id")
            if remote in (None, ""):
                break
            repo_id = repo.get("id")
            active = repo.get("active") is True and isinstance(repo_id, int) and repo_id > 0
            return str(remote), repo_id if active else None
        raise ExternalServiceError(
            f"repository {repo_full_name!r} is not among the token user's forge repositories",
            service=SERVICE,
            method="GET",
            path=path,
            status_code=response.status_code,
        )

    # --- secrets --------------------------------------------------------------------------

    async def set_secrets(self, repo_id: int, secrets: Mapping[str, Secret]) -> None:
        """Create or update each secret for the ``push`` and ``manual`` events."""
        base = f"/api/repos/{_int_id(repo_id)}/secrets"
        existing = await self._secret_names(base)
        for raw_name, secret in secrets.items():
            # Woodpecker stores names lower-cased; matching on anything else would create
            # a second secret instead of updating the first.
            name = raw_name.lower()
            body = {
                "name": name,
                "value": secret.reveal(),
                "events": list(SECRET_EVENTS),
                "images": [],
                "note": "managed by forgeline",
            }
            if name in existing:
                await self._request("PATCH", f"{base}/{name}", json=body)
            else:
                await self._request("POST", base, json=body)
            log.info(
                "woodpecker secret set", repo_id=repo_id, secret=name, updated=name in existing
            )

    async def _secret_names(self, base: str) -> set[str]:
        names: set[str] = set()
        for page in range(1, _MAX_PAGES + 1):
            params = {"page": str(page), "perPage": str(_PER_PAGE)}
            response = await self._request("GET", base, params=params)
            listed = self._json(response, "GET", base)
            if not isinstance(listed, list):
                raise self._garbage("GET", base, response, "expected a list of secrets")
            names.update(str(i.get("name", "")).lower() for i in listed if isinstance(i, dict))
            if len(listed) < _PER_PAGE:
                return names
        raise ExternalServiceError(
            f"more than {_MAX_PAGES * _PER_PAGE} secrets", service=SERVICE, method="GET", path=base
        )

    # --- pipelines ------------------------------------------------------------------------

    async def find_pipeline(
        self, repo_id: int, commit: str, timeout_s: float, *, branch: str = "main"
    ) -> PipelineStatus | None:
        """The push pipeline of ``commit``, polling up to ``timeout_s`` for it to appear."""
        path = f"/api/repos/{_int_id(repo_id)}/pipelines"
        params = {"branch": branch, "event": "push", "perPage": "50"}
        deadline = time.monotonic() + timeout_s
        while True:
            response = await self._request("GET", path, params=params)
            listed = self._json(response, "GET", path)
            for item in listed or []:
                if isinstance(item, dict) and _same_commit(item.get("commit"), commit):
                    return self._pipeline(repo_id, item)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(self._poll_interval_s, remaining))

    async def trigger(
        self, repo_id: int, branch: str, variables: Mapping[str, str]
    ) -> PipelineStatus | None:
        """Start a ``manual`` pipeline on ``branch``; ``None`` when nothing runs (204)."""
        path = f"/api/repos/{_int_id(repo_id)}/pipelines"
        body = {"branch": branch, "variables": dict(variables)}
        response = await self._request("POST", path, json=body, ok=(200, 204))
        if response.status_code == 204:
            log.info("woodpecker pipeline filtered out", repo_id=repo_id, branch=branch)
            return None
        return self._pipeline(repo_id, self._json(response, "POST", path))

    async def get_pipeline(self, repo_id: int, number: int) -> PipelineStatus:
        """The pipeline's current status, with its steps."""
        path = f"/api/repos/{_int_id(repo_id)}/pipelines/{_int_id(number)}"
        response = await self._request("GET", path)
        return self._pipeline(repo_id, self._json(response, "GET", path))

    async def follow(
        self,
        repo_id: int,
        number: int,
        timeout_s: float,
        *,
        on_change: StatusListener | None = None,
    ) -> PipelineStatus:
        """Poll until final or ``timeout_s`` passes; the last status seen."""
        deadline = time.monotonic() + timeout_s
        last: PipelineStatus | None = None
        while True:
            current = await self.get_pipeline(repo_id, number)
            if on_change is not None and (
                last is None or (current.status, current.steps) != (last.status, last.steps)
            ):
                await on_change(current)
            last = current
            remaining = deadline - time.monotonic()
            if current.is_final or remaining <= 0:
                return current
            await asyncio.sleep(min(self._poll_interval_s, remaining))

    async def cancel(self, repo_id: int, number: int) -> None:
        """Stop a pending or running pipeline; a finished one is left alone."""
        path = f"/api/repos/{_int_id(repo_id)}/pipelines/{_int_id(number)}/cancel"
        response = await self._request("POST", path, ok=(200, 204, 400, 422))
        if response.status_code in (400, 422):
            # Woodpecker refuses to cancel a pipeline that is no longer pending, running or
            # blocked; that is only fine if it really has finished.
            current = await self.get_pipeline(repo_id, number)
            if not current.is_final:
                raise self._error("POST", path, response, "cancel refused")
        log.info("woodpecker pipeline cancelled", repo_id=repo_id, number=number)

    def _pipeline(self, repo_id: int, data: Any) -> PipelineStatus:
        status = parse_pipeline(data)
        return PipelineStatus(
            number=status.number,
            status=status.status,
            commit=status.commit,
            branch=status.branch,
            event=status.event,
            failed_step=status.failed_step,
            error=status.error,
            url=f"{self._base_url}/repos/{repo_id}/pipeline/{status.number}",
            steps=status.steps,
        )

    # --- transport ------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        ok: tuple[int, ...] = (200,),
        explain: Mapping[int, str] | None = None,
    ) -> httpx.Response:
        """One call, retried on connection errors and 5xx; answers outside ``ok`` raise."""
        for attempt in range(1, self._max_attempts + 1):
            last_try = attempt == self._max_attempts
            try:
                response = await self._client.request(method, path, params=params, json=json)
            except httpx.TransportError as exc:
                retryable = isinstance(exc, _NOT_SENT) or method in _IDEMPOTENT
                if last_try or not retryable:
                    reason = type(exc).__name__
                    attempts = f" after {attempt} attempts" if attempt > 1 else ""
                    raise ExternalServiceError(
                        f"cannot reach {self._base_url}{attempts} ({reason})",
                        service=SERVICE,
                        method=method,
                        path=path,
                    ) from exc
                log.warning(
                    "woodpecker unreachable, retrying",
                    method=method,
                    path=path,
                    attempt=attempt,
                    error=type(exc).__name__,
                )
                await asyncio.sleep(self._delay(attempt, None))
                continue
            # A 5xx is retried for every method: Woodpecker's handlers answer 5xx when a
            # step they depend on failed (the forge, the store) and nothing was committed;
            # the rare create-then-fail can at worst start one extra pipeline.
            if response.status_code >= 500 and not last_try:
                log.warning(
                    "woodpecker server error, retrying",
                    method=method,
                    path=path,
                    status=response.status_code,
                    attempt=attempt,
                )
                await asyncio.sleep(self._delay(attempt, response))
                continue
            if response.status_code in ok:
                return response
            reason = (explain or {}).get(response.status_code) or _reason(response.status_code)
            if response.status_code >= 500 and attempt > 1:
                reason = f"{reason} after {attempt} attempts"
            raise self._error(method, path, response, reason)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def _json(self, response: httpx.Response, method: str, path: str) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise self._garbage(method, path, response, "answer is not JSON") from exc

    def _garbage(
        self, method: str, path: str, response: httpx.Response, why: str
    ) -> ExternalServiceError:
        return self._error(method, path, response, why)

    def _error(
        self, method: str, path: str, response: httpx.Response, reason: str
    ) -> ExternalServiceError:
        excerpt = " ".join(response.text[:BODY_EXCERPT].split())
        # The server has no reason to echo the token, but an excerpt is foreign text:
        # mask it anyway rather than trust every proxy in between.
        if self._token.reveal():
            excerpt = excerpt.replace(self._token.reveal(), self._token.mask)
        return ExternalServiceError(
            reason,
            service=SERVICE,
            method=method,
            path=path,
            status_code=response.status_code,
            body_excerpt=excerpt or None,
        )

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = _retry_after(response)
        if retry_after is not None:
            return min(self._backoff.max_s, retry_after)
        # "Equal jitter": at least half the backoff, so retries never bunch up at zero.
        return self._backoff.delay(attempt)


# --- parsing Woodpecker's JSON, once, into frozen types ------------------------------------


def parse_pipeline(data: Any) -> PipelineStatus:
    """A ``Pipeline`` JSON object (``server/model/pipeline.go``) as a :class:`PipelineStatus`.

    Unknown fields are ignored; a missing ``number`` or ``status`` is a protocol error.
    """
    if not isinstance(data, dict):
        raise ExternalServiceError("expected a pipeline object", service=SERVICE)
    number = data.get("number")
    status = data.get("status")
    if not isinstance(number, int) or isinstance(number, bool) or not isinstance(status, str):
        raise ExternalServiceError(
            "pipeline without an integer number and a status",
            service=SERVICE,
            body_excerpt=str(data)[:BODY_EXCERPT],
        )
    steps: list[PipelineStep] = []
    for workflow in data.get("workflows") or ():
        if not isinstance(workflow, dict):
            continue
        for child in workflow.get("children") or ():
            if isinstance(child, dict):
                exit_code = child.get("exit_code")
                steps.append(
                    PipelineStep(
                        name=str(child.get("name", "")),
                        state=str(child.get("state", "")),
                        exit_code=exit_code if isinstance(exit_code, int) else None,
                        error=str(child["error"]) if child.get("error") else None,
                    )
                )
    failed = next((s.name for s in steps if s.state in _FAILED_STATES), None)
    errors = data.get("errors") or ()
    messages = [str(e.get("message", "")) for e in errors if isinstance(e, dict)]
    return PipelineStatus(
        number=number,
        status=status,
        commit=str(data["commit"]) if data.get("commit") else None,
        branch=str(data["branch"]) if data.get("branch") else None,
        event=str(data["event"]) if data.get("event") else None,
        failed_step=failed,
        error="; ".join(m for m in messages if m) or None,
        steps=tuple(steps),
    )


def _same_commit(found: Any, wanted: str) -> bool:
    # Woodpecker stores the full SHA; a caller may hold an abbreviated one.
    if not isinstance(found, str) or not found or len(wanted) < 7:
        return False
    return found.lower().startswith(wanted.lower()) or wanted.lower().startswith(found.lower())


def _int_id(value: int) -> int:
    # Woodpecker answers 400 to anything but an integer id; catch the mistake here, where
    # the stack trace still points at the caller.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"Woodpecker ids are integers, got {value!r}")
    return value


def _repo_id(data: Any, method: str, path: str) -> int:
    repo_id = data.get("id") if isinstance(data, dict) else None
    if not isinstance(repo_id, int) or isinstance(repo_id, bool) or repo_id <= 0:
        raise ExternalServiceError(
            "repository without an integer id", service=SERVICE, method=method, path=path
        )
    return repo_id


def _reason(status: int) -> str:
    if status == 401:
        return "token rejected"
    if status == 403:
        return "forbidden"
    if status == 404:
        return "not found"
    if status >= 500:
        return "server error"
    return "request refused"


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
