"""A typed client of forgeline's HTTP API: one method per route, answers read into the
models of :mod:`forgeline.entrypoints.api.schemas` (the ones ``/openapi.json`` describes).

::

    with Client("http://127.0.0.1:8080", token) as forgeline:
        accepted = forgeline.build("myapp", BuildIn.model_validate({"prompt": "…"}))
        for event in forgeline.events(accepted.task_id):
            print(event.type)
        print(forgeline.get_task(accepted.task_id).status)

Errors, both :class:`~forgeline.domain.errors.ForgelineError`::

    ClientError
    ├── ApiError          the API answered with an error: status_code, code, message,
    │                     fields, request_id, retry_after_s
    └── UnreachableError  no answer (connection refused, timeout), or not forgeline's

Timeouts are explicit (:data:`TIMEOUT_S`, :data:`SSE_READ_TIMEOUT_S`); an event stream
that breaks is resumed where it stopped (``Last-Event-ID``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from httpx_sse import connect_sse
from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from forgeline.domain.backoff import Backoff
from forgeline.domain.errors import ForgelineError
from forgeline.domain.task import TaskStatus
from forgeline.entrypoints.api.schemas import (
    Accepted,
    AgentOut,
    BuildIn,
    CredentialOut,
    ErrorEnvelope,
    EventOut,
    ProjectDeleted,
    ProjectIn,
    ProjectOut,
    ProjectPage,
    ProjectPatch,
    TaskOut,
    TaskPage,
    TemplateOut,
    TokenOut,
)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

#: Longest wait for one ordinary answer.
TIMEOUT_S = 60.0
#: Longest silence on an event stream (the server sends a keep-alive after at most 30 s
#: of it, ``FORGELINE_SSE_KEEPALIVE_S``, 15 s by default).
SSE_READ_TIMEOUT_S = 45.0
#: How often in a row a broken event stream is resumed, with no event in between, before
#: :meth:`Client.events` gives up.
SSE_RECONNECTS = 5
#: Waits between those reconnects: 1, 2, 4, 8, 10 s.
_SSE_BACKOFF = Backoff(base_s=1.0, max_s=10.0, jitter="none")


class ClientError(ForgelineError):
    """A call to forgeline's API that did not give an answer."""


class ApiError(ClientError):
    """The API answered with an error; its envelope's parts are attributes."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.request_id = response.headers.get("x-request-id")
        try:
            detail = ErrorEnvelope.model_validate_json(response.content).error
        except PydanticValidationError:
            self.code = "http_error"
            self.fields: list[dict[str, str]] = []
            self.retry_after_s: int | None = None
            said = response.text[:300]
            super().__init__(f"HTTP {response.status_code}: {said}")
            return
        self.code = detail.code
        self.fields = [f.model_dump() for f in detail.fields or ()]
        self.retry_after_s = detail.retry_after_s
        super().__init__(f"{detail.message} ({detail.code}, HTTP {response.status_code})")


class UnreachableError(ClientError):
    """No answer from forgeline, or one that is not its API's."""


class Client:
    """forgeline's API at ``base_url``, authenticated with ``token``. A context manager;
    :meth:`close` releases its connections."""

    def __init__(
        self, base_url: str, token: str, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(TIMEOUT_S),
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    # --- projects --------------------------------------------------------------------------

    def create_project(self, project: ProjectIn) -> ProjectOut:
        """``POST /projects``."""
        return self._model(ProjectOut, "POST", "/projects", json=_body(project))

    def list_projects(self, *, limit: int = 50, cursor: str | None = None) -> ProjectPage:
        """``GET /projects``: one page."""
        params = _params(limit=limit, cursor=cursor)
        return self._model(ProjectPage, "GET", "/projects", params=params)

    def all_projects(self) -> Iterator[ProjectOut]:
        """Every project, page after page."""
        cursor = None
        while True:
            page = self.list_projects(limit=200, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_project(self, name: str) -> ProjectOut:
        """``GET /projects/{name}``."""
        return self._model(ProjectOut, "GET", f"/projects/{name}")

    def update_project(self, name: str, patch: ProjectPatch) -> ProjectOut:
        """``PATCH /projects/{name}``: only the fields set on ``patch`` are sent."""
        body = patch.model_dump(mode="json", exclude_unset=True)
        return self._model(ProjectOut, "PATCH", f"/projects/{name}", json=body)

    def delete_project(self, name: str) -> ProjectDeleted:
        """``DELETE /projects/{name}``."""
        return self._model(ProjectDeleted, "DELETE", f"/projects/{name}")

    # --- builds and tasks ------------------------------------------------------------------

    def build(self, project: str, spec: BuildIn, *, idempotency_key: str | None = None) -> Accepted:
        """``POST /project/{name}/build``."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        path = f"/project/{project}/build"
        return self._model(Accepted, "POST", path, json=_body(spec), headers=headers)

    def list_tasks(
        self,
        *,
        project: str | None = None,
        status: TaskStatus | None = None,
        since: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        """``GET /tasks``: one page, newest first."""
        params = _params(
            project=project,
            status=None if status is None else status.value,
            since=None if since is None else since.isoformat(),
            limit=limit,
            cursor=cursor,
        )
        return self._model(TaskPage, "GET", "/tasks", params=params)

    def get_task(self, task_id: str) -> TaskOut:
        """``GET /tasks/{id}``."""
        return self._model(TaskOut, "GET", f"/tasks/{task_id}")

    def cancel_task(self, task_id: str) -> TaskOut:
        """``POST /tasks/{id}/cancel``."""
        return self._model(TaskOut, "POST", f"/tasks/{task_id}/cancel")

    def retry_task(self, task_id: str, *, idempotency_key: str | None = None) -> Accepted:
        """``POST /tasks/{id}/retry``."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._model(Accepted, "POST", f"/tasks/{task_id}/retry", headers=headers)

    def task_diff(self, task_id: str) -> str:
        """``GET /tasks/{id}/diff``: the pushed commit's patch."""
        return self._call("GET", f"/tasks/{task_id}/diff").text

    def task_log(self, task_id: str) -> str:
        """``GET /tasks/{id}/log``: the events as plain text."""
        return self._call("GET", f"/tasks/{task_id}/log").text

    def events_so_far(self, task_id: str) -> list[EventOut]:
        """``GET /tasks/{id}/events?format=json``."""
        response = self._call("GET", f"/tasks/{task_id}/events", params={"format": "json"})
        return self._parse(_EVENTS, response)

    def events(
        self, task_id: str, *, on_garbage: Callable[[str], None] | None = None
    ) -> Iterator[EventOut]:
        """The task's events until its ``result``, as they happen. A broken stream is
        resumed where it stopped (``Last-Event-ID``), at once if the server dropped it for
        reading too slowly; after :data:`SSE_RECONNECTS` breaks in a row with no event in
        between, :class:`UnreachableError`. A message that is not an event (a proxy's
        garbage) is skipped and handed to ``on_garbage``."""
        after = 0
        failures = 0
        # Reads wait for more than one keep-alive period of the server.
        timeout = httpx.Timeout(TIMEOUT_S, read=SSE_READ_TIMEOUT_S)
        while True:
            headers = {"Last-Event-ID": str(after)} if after else {}
            try:
                with connect_sse(
                    self._http, "GET", f"/tasks/{task_id}/events", headers=headers, timeout=timeout
                ) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        raise ApiError(source.response)
                    for sse in source.iter_sse():
                        if sse.event == "dropped":
                            break  # too slow for the server: resume where it stopped, at once
                        event = _decode_event(sse.data)
                        if event is not None:
                            after, failures = event.seq, 0
                            yield event
                        elif sse.data and on_garbage is not None:
                            on_garbage(sse.data)
                    else:
                        return
            except httpx.HTTPError as exc:
                if failures == SSE_RECONNECTS:
                    raise UnreachableError(f"event stream broke: {exc}") from exc
                time.sleep(_SSE_BACKOFF.delay(failures + 1))
                failures += 1

    # --- agents, templates, credentials, tokens --------------------------------------------

    def agents(self) -> list[AgentOut]:
        """``GET /agents``."""
        return self._parse(_AGENTS, self._call("GET", "/agents"))

    def templates(self) -> list[TemplateOut]:
        """``GET /templates``."""
        return self._parse(_TEMPLATES, self._call("GET", "/templates"))

    def put_credential(self, name: str, value: str, *, project: str | None = None) -> CredentialOut:
        """``PUT /credentials/{name}``."""
        params = _params(project=project)
        path = f"/credentials/{name}"
        return self._model(CredentialOut, "PUT", path, json={"value": value}, params=params)

    def list_credentials(self, *, project: str | None = None) -> list[CredentialOut]:
        """``GET /credentials``."""
        response = self._call("GET", "/credentials", params=_params(project=project))
        return self._parse(_CREDENTIALS, response)

    def delete_credential(self, name: str, *, project: str | None = None) -> None:
        """``DELETE /credentials/{name}``."""
        self._call("DELETE", f"/credentials/{name}", params=_params(project=project))

    def list_tokens(self) -> list[TokenOut]:
        """``GET /tokens``."""
        return self._parse(_TOKENS, self._call("GET", "/tokens"))

    def revoke_token(self, token_id: str) -> None:
        """``DELETE /tokens/{id}``."""
        self._call("DELETE", f"/tokens/{token_id}")

    # --- plumbing --------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UnreachableError(f"cannot reach forgeline at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise ApiError(response)
        return response

    def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return self._parse(TypeAdapter(model), self._call(method, path, **kwargs))

    def _parse(self, adapter: TypeAdapter[T], response: httpx.Response) -> T:
        try:
            return adapter.validate_json(response.content)
        except PydanticValidationError as exc:
            json_invalid = any(e["type"] == "json_invalid" for e in exc.errors())
            what = "something that is not JSON" if json_invalid else "JSON of another shape"
            request = response.request
            raise UnreachableError(
                f"{self.base_url} answered {request.method} {request.url.path} with {what}"
            ) from exc


_EVENTS = TypeAdapter(list[EventOut])
_AGENTS = TypeAdapter(list[AgentOut])
_TEMPLATES = TypeAdapter(list[TemplateOut])
_CREDENTIALS = TypeAdapter(list[CredentialOut])
_TOKENS = TypeAdapter(list[TokenOut])


def _body(model: BaseModel) -> Any:
    """A request model as JSON (by its public field names: ``continue``)."""
    return model.model_dump(mode="json", by_alias=True)


def _params(**values: Any) -> Mapping[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _decode_event(data: str) -> EventOut | None:
    """One SSE message's ``data`` as an event; None for anything else.

    httpx-sse hands on a comment-only block (the server's ``: keep-alive``) as a message
    with empty data, where the SSE spec drops it. Anything else that is not an event (a
    proxy's garbage, a wrong URL) is not one either, so that following a build never ends
    while the build goes on.
    """
    if not data:
        return None
    try:
        return EventOut.model_validate(json.loads(data))
    # RecursionError: nested past the decoder's depth, garbage too.
    except (ValueError, RecursionError, PydanticValidationError):
        return None
