"""A fake Woodpecker server on 127.0.0.1, faithful to the real handlers where forgeline
touches them (``shared/reference/woodpecker.md`` and ``server/api/*.go``):

* every call needs ``Authorization: Bearer <token>`` (401 otherwise);
* ``{repo_id}`` must be an integer (400), and a known one (404);
* ``GET /api/user/repos?all=true`` lists the forge repositories, active or not, with
  ``forge_remote_id``; ``POST /api/repos?forge_remote_id=`` activates one (409 when it is
  active already, 403 when the user is not admin of it on the forge);
* ``GET /api/repos/lookup/{owner}/{name}`` finds an active repository;
* secrets: names are lower-cased, name/value/events are required (422, as
  ``Secret.Validate``), creating an existing name fails with 500 (a unique-constraint
  error), ``PATCH`` updates, values are never returned;
* ``POST /api/repos/{id}/pipelines`` starts a pipeline with the event ``manual`` on the
  branch head, or answers 204 without body when the config filters skip everything;
* pipelines go pending → running → a final status as the *test* drives them
  (:meth:`FakeWoodpecker.set_status`), and a push creates one as the forge's webhook would
  (:meth:`FakeWoodpecker.push`);
* ``POST …/cancel`` answers 204 for a pending/running/blocked pipeline and 400 otherwise.

The server runs in a thread (stdlib ``ThreadingHTTPServer``), answers only loopback, and is
stopped by the fixture; :meth:`FakeWoodpecker.stop` also cuts kept-alive connections so a
"server down" test really sees a dead server.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

KNOWN_EVENTS = frozenset(
    {
        "push",
        "pull_request",
        "pull_request_closed",
        "tag",
        "release",
        "deployment",
        "cron",
        "manual",
    }
)
#: The token the fake accepts unless a test gives another.
DEFAULT_TOKEN = "wp-test-token-0123456789"
ACTIVE_STATUSES = frozenset({"pending", "running", "blocked"})
DEFAULT_STEPS = ("clone", "build", "deploy")


@dataclass
class ForgeRepo:
    """A repository on the forge behind the fake server."""

    forge_remote_id: str
    full_name: str
    admin: bool = True
    branches: dict[str, str] = field(default_factory=lambda: {"main": "0" * 40})
    repo_id: int | None = None  # set once activated
    filter_all: bool = False  # config filters skip every pipeline (204 on trigger)
    # When set, (final status, failing step): each read of a pipeline moves it one state on.
    autorun: tuple[str, str | None] | None = None

    @property
    def owner(self) -> str:
        return self.full_name.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.full_name.split("/", 1)[1]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.repo_id or 0,
            "forge_remote_id": self.forge_remote_id,
            "owner": self.owner,
            "name": self.name,
            "full_name": self.full_name,
            "default_branch": "main",
            "active": self.repo_id is not None,
        }


@dataclass
class Pipeline:
    """One pipeline with its steps (one workflow)."""

    id: int
    number: int
    event: str
    branch: str
    commit: str
    status: str = "pending"
    variables: dict[str, str] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        workflow_state = self.status
        return {
            "id": self.id,
            "number": self.number,
            "event": self.event,
            "branch": self.branch,
            "commit": self.commit,
            "status": self.status,
            "message": f"MANUAL PIPELINE @ {self.branch}" if self.event == "manual" else "push",
            "variables": self.variables,
            "errors": None,
            "workflows": [
                {
                    "id": self.id * 100,
                    "name": "woodpecker",
                    "state": workflow_state,
                    "children": [dict(s) for s in self.steps],
                }
            ],
        }


class FakeWoodpecker:
    """The fake server's state and the levers a test pulls. Thread-safe."""

    def __init__(self, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self._lock = threading.Lock()
        self._seen = threading.Condition(self._lock)
        self._forge: dict[str, ForgeRepo] = {}
        self._active: dict[int, ForgeRepo] = {}
        self._secrets: dict[int, dict[str, dict[str, Any]]] = {}
        self._pipelines: dict[int, list[Pipeline]] = {}
        self._ids = itertools.count(1)
        self._remote_ids = itertools.count(1001)
        self._faults: deque[int] = deque()
        self.requests: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # --- levers ---------------------------------------------------------------------------

    def add_forge_repo(
        self, full_name: str, *, admin: bool = True, head: str = "a" * 40
    ) -> ForgeRepo:
        """A repository on the forge (not yet active in Woodpecker)."""
        with self._lock:
            repo = ForgeRepo(str(next(self._remote_ids)), full_name, admin, {"main": head})
            self._forge[repo.forge_remote_id] = repo
            return repo

    def set_head(self, repo_id: int, commit: str, branch: str = "main") -> None:
        """Move a branch head on the forge (what a manual pipeline builds)."""
        with self._lock:
            self._active[repo_id].branches[branch] = commit

    def autorun(
        self, repo_id: int, final: str = "success", failing_step: str | None = None
    ) -> None:
        """Let the repository's pipelines run by themselves: every read of a pipeline moves
        it one state on (pending → running → ``final``), for end-to-end tests whose code
        under test follows the pipeline without the test's help."""
        with self._lock:
            self._active[repo_id].autorun = (final, failing_step)

    def filter_all(self, repo_id: int, on: bool = True) -> None:
        """Make the config filters skip every pipeline of the repository."""
        with self._lock:
            self._active[repo_id].filter_all = on

    def push(
        self, repo_id: int, commit: str, branch: str = "main", steps: Sequence[str] = DEFAULT_STEPS
    ) -> int:
        """A push arrives through the forge's webhook: a ``push`` pipeline; its number."""
        with self._lock:
            self._active[repo_id].branches[branch] = commit
            return self._new_pipeline(
                repo_id, event="push", branch=branch, commit=commit, variables={}, steps=steps
            ).number

    def set_status(
        self, repo_id: int, number: int, status: str, *, failing_step: str | None = None
    ) -> None:
        """Drive a pipeline: ``running``, then ``success`` or ``failure`` (of ``failing_step``)."""
        with self._lock:
            pipeline = self._pipeline(repo_id, number)
            assert pipeline is not None, f"no pipeline {number} in repo {repo_id}"
            pipeline.status = status
            _set_steps(pipeline, status, failing_step)

    def status_of(self, repo_id: int, number: int) -> str:
        """The pipeline's status as the server holds it."""
        with self._lock:
            pipeline = self._pipeline(repo_id, number)
            assert pipeline is not None
            return pipeline.status

    def pipelines(self, repo_id: int) -> list[dict[str, Any]]:
        """Every pipeline of the repository, oldest first, as JSON."""
        with self._lock:
            return [p.to_json() for p in self._pipelines.get(repo_id, [])]

    def secrets(self, repo_id: int) -> dict[str, dict[str, Any]]:
        """The stored secrets, values included (only the test may look)."""
        with self._lock:
            return {k: dict(v) for k, v in self._secrets.get(repo_id, {}).items()}

    def wait_for_requests(self, method: str, path: str, count: int, timeout: float) -> bool:
        """Block until ``(method, path)`` was requested ``count`` times (or the timeout);
        run it with ``asyncio.to_thread`` from a test."""
        with self._seen:
            return self._seen.wait_for(
                lambda: self.requests.count((method, path)) >= count, timeout=timeout
            )

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` requests with ``status`` (a struggling server)."""
        with self._lock:
            self._faults.extend([status] * count)

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:43121``."""
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeWoodpecker:
        """Listen on a free loopback port, serving from a daemon thread."""
        fake = self

        class Handler(_Handler):
            state = fake

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        # Closing must not wait for idle keep-alive connections; stop() cuts them instead.
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-woodpecker"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open connections; idempotent, bounded."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- used by the handler --------------------------------------------------------------

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def _pipeline(self, repo_id: int, number: int) -> Pipeline | None:
        return next((p for p in self._pipelines.get(repo_id, []) if p.number == number), None)

    def _new_pipeline(
        self,
        repo_id: int,
        *,
        event: str,
        branch: str,
        commit: str,
        variables: dict[str, str],
        steps: Sequence[str] = DEFAULT_STEPS,
    ) -> Pipeline:
        pipelines = self._pipelines.setdefault(repo_id, [])
        pipeline = Pipeline(
            id=next(self._ids),
            number=len(pipelines) + 1,
            event=event,
            branch=branch,
            commit=commit,
            variables=dict(variables),
            steps=[
                {"id": i, "name": name, "state": "pending", "exit_code": 0, "error": ""}
                for i, name in enumerate(steps, start=1)
            ],
        )
        pipelines.append(pipeline)
        return pipeline

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, auth: str | None
    ) -> tuple[int, Any]:
        """Route one request; returns ``(status, JSON body or text or None)``."""
        with self._lock:
            self.requests.append((method, path))
            self._seen.notify_all()
            if self._faults:
                status = self._faults.popleft()
                return status, "upstream trouble"
            if auth != f"Bearer {self.token}":
                return 401, "Unauthorized"
            for pattern, handler_name in _ROUTES:
                match = pattern.fullmatch(path)
                if match and handler_name.startswith(method + " "):
                    handler = getattr(self, "_" + handler_name.split(" ", 1)[1])
                    result: tuple[int, Any] = handler(query, body, **match.groupdict())
                    return result
            return 404, "404 page not found"

    def _repo(self, repo_id: str) -> ForgeRepo | tuple[int, str]:
        try:
            number = int(repo_id)
        except ValueError:
            return 400, f'strconv.ParseInt: parsing "{repo_id}": invalid syntax'
        repo = self._active.get(number)
        return repo if repo is not None else (404, "Repo not found")

    # Handlers: (query, body, **path params) -> (status, body). Names map to _ROUTES.

    def _user_repos(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        everything = query.get("all", ["false"])[0] == "true"
        return 200, [r.to_json() for r in self._forge.values() if everything or r.repo_id]

    def _activate(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        remote = query.get("forge_remote_id", [""])[0]
        if not remote:
            return 400, "forge_remote_id is required"
        repo = self._forge.get(remote)
        if repo is None:
            return 404, "Could not fetch repository from forge"
        if repo.repo_id is not None:
            return 409, "Repository is already active."
        if not repo.admin:
            return 403, "User has to be a admin of this repository"
        repo.repo_id = next(self._ids)
        self._active[repo.repo_id] = repo
        return 200, repo.to_json()

    def _lookup(self, query: dict[str, list[str]], body: Any, owner: str, name: str) -> Any:
        for repo in self._active.values():
            if repo.full_name == f"{owner}/{name}":
                return 200, repo.to_json()
        return 404, "Repo not found"

    def _list_secrets(self, query: dict[str, list[str]], body: Any, repo_id: str) -> Any:
        repo = self._repo(repo_id)
        if isinstance(repo, tuple):
            return repo
        stored = list(self._secrets.get(repo.repo_id or 0, {}).values())
        return 200, [_copy_secret(s) for s in _page(stored, query)]

    def _create_secret(self, query: dict[str, list[str]], body: Any, repo_id: str) -> Any:
        repo = self._repo(repo_id)
        if isinstance(repo, tuple):
            return repo
        if not isinstance(body, dict):
            return 400, "Error parsing secret."
        secret = {
            "name": str(body.get("name", "")).lower(),
            "value": body.get("value", ""),
            "events": body.get("events") or [],
            "images": body.get("images") or [],
            "note": body.get("note", ""),
        }
        problem = _validate_secret(secret)
        if problem:
            return 422, f"Error inserting secret. {problem}"
        stored = self._secrets.setdefault(repo.repo_id or 0, {})
        if secret["name"] in stored:
            return 500, f"Error inserting secret {body.get('name')!r}. UNIQUE constraint failed"
        stored[secret["name"]] = secret
        return 200, _copy_secret(secret)

    def _patch_secret(self, query: dict[str, list[str]], body: Any, repo_id: str, name: str) -> Any:
        repo = self._repo(repo_id)
        if isinstance(repo, tuple):
            return repo
        stored = self._secrets.get(repo.repo_id or 0, {})
        secret = stored.get(name)
        if secret is None:
            return 404, "Secret not found"
        if not isinstance(body, dict):
            return 400, "Error parsing secret."
        updated = dict(secret)
        if body.get("value"):
            updated["value"] = body["value"]
        if body.get("events") is not None:
            updated["events"] = body["events"]
        if body.get("images") is not None:
            updated["images"] = body["images"]
        problem = _validate_secret(updated)
        if problem:
            return 422, f"Error updating secret. {problem}"
        stored[name] = updated
        return 200, _copy_secret(updated)

    def _list_pipelines(self, query: dict[str, list[str]], body: Any, repo_id: str) -> Any:
        repo = self._repo(repo_id)
        if isinstance(repo, tuple):
            return repo
        items = list(reversed(self._pipelines.get(repo.repo_id or 0, [])))
        for key in ("branch", "event", "status"):
            if query.get(key):
                items = [p for p in items if getattr(p, key) == query[key][0]]
        chosen = _page(items, query)
        # The list endpoint answers pipelines without their workflow tree.
        return 200, [{k: v for k, v in p.to_json().items() if k != "workflows"} for p in chosen]

    def _create_pipeline(self, query: dict[str, list[str]], body: Any, repo_id: str) -> Any:
        repo = self._repo(repo_id)
        if isinstance(repo, tuple):
            return repo
        if not isinstance(body, dict) or not isinstance(body.get("branch"), str):
            return 400, "invalid pipeline options"
        branch = body["branch"]
        head = repo.branches.get(branch)
        if head is None:
            return 500, "could not fetch branch head: branch not found"
        if repo.filter_all:
            return 204, None
        variables = body.get("variables") or {}
        pipeline = self._new_pipeline(
            repo.repo_id or 0, event="manual", branch=branch, commit=head, variables=variables
        )
        return 200, pipeline.to_json()

    def _get_pipeline(
        self, query: dict[str, list[str]], body: Any, repo_id: str, number: str
    ) -> Any:
        repo = self._repo(repo_id)
        if isinstance(repo, tuple):
            return repo
        pipelines = self._pipelines.get(repo.repo_id or 0, [])
        if number == "latest":
            pipeline = pipelines[-1] if pipelines else None
        else:
            try:
                pipeline = self._pipeline(repo.repo_id or 0, int(number))
            except ValueError:
                return 400, f'strconv.ParseInt: parsing "{number}": invalid syntax'
        if pipeline is None:
            return 404, "Pipeline not found"
        answer = pipeline.to_json()
        if repo.autorun is not None:
            final, failing_step = repo.autorun
            following = {"pending": "running", "running": final}.get(pipeline.status)
            if following is not None:
                pipeline.status = following
                _set_steps(pipeline, following, failing_step)
        return 200, answer

    def _cancel_pipeline(
        self, query: dict[str, list[str]], body: Any, repo_id: str, number: str
    ) -> Any:
        repo = self._repo(repo_id)
        if isinstance(repo, tuple):
            return repo
        pipeline = self._pipeline(repo.repo_id or 0, int(number))
        if pipeline is None:
            return 404, "Pipeline not found"
        if pipeline.status not in ACTIVE_STATUSES:
            return 400, "Cannot cancel a non-running or non-pending or non-blocked pipeline"
        pipeline.status = "killed"
        _set_steps(pipeline, "killed", None)
        return 204, None


_ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"/api/user/repos"), "GET user_repos"),
    (re.compile(r"/api/repos"), "POST activate"),
    (re.compile(r"/api/repos/lookup/(?P<owner>[^/]+)/(?P<name>[^/]+)"), "GET lookup"),
    (re.compile(r"/api/repos/(?P<repo_id>[^/]+)/secrets"), "GET list_secrets"),
    (re.compile(r"/api/repos/(?P<repo_id>[^/]+)/secrets"), "POST create_secret"),
    (re.compile(r"/api/repos/(?P<repo_id>[^/]+)/secrets/(?P<name>[^/]+)"), "PATCH patch_secret"),
    (re.compile(r"/api/repos/(?P<repo_id>[^/]+)/pipelines"), "GET list_pipelines"),
    (re.compile(r"/api/repos/(?P<repo_id>[^/]+)/pipelines"), "POST create_pipeline"),
    (re.compile(r"/api/repos/(?P<repo_id>[^/]+)/pipelines/(?P<number>[^/]+)"), "GET get_pipeline"),
    (
        re.compile(r"/api/repos/(?P<repo_id>[^/]+)/pipelines/(?P<number>\d+)/cancel"),
        "POST cancel_pipeline",
    ),
]


def _page(items: list[Any], query: dict[str, list[str]]) -> list[Any]:
    # session.Pagination: page from 1, perPage 50 by default.
    per_page = int(query.get("perPage", ["50"])[0])
    page = int(query.get("page", ["1"])[0])
    return items[(page - 1) * per_page : page * per_page]


def _validate_secret(secret: dict[str, Any]) -> str | None:
    # As model.Secret.Validate: name and value non-empty, at least one known event.
    if not secret["name"]:
        return "name is missing"
    if not secret["value"]:
        return "value is missing"
    events = secret["events"]
    if not isinstance(events, list) or not events:
        return "event is missing"
    unknown = [e for e in events if e not in KNOWN_EVENTS]
    if unknown:
        return f"event {unknown[0]!r} is invalid"
    return None


def _copy_secret(secret: dict[str, Any]) -> dict[str, Any]:
    # Secret.Copy(): everything but the value.
    return {k: v for k, v in secret.items() if k != "value"}


def _set_steps(pipeline: Pipeline, status: str, failing_step: str | None) -> None:
    steps = pipeline.steps
    if status in {"pending", "blocked", "running"}:
        # Running: the first step runs, the rest wait.
        for index, step in enumerate(steps):
            step["state"] = "running" if status == "running" and index == 0 else "pending"
    elif status == "success":
        for step in steps:
            step.update(state="success", exit_code=0)
    elif status == "failure":
        failed = failing_step or steps[-1]["name"]
        reached = False
        for step in steps:
            if step["name"] == failed:
                step.update(state="failure", exit_code=1)
                reached = True
            else:
                step["state"] = "skipped" if reached else "success"
    elif status in {"killed", "canceled"}:
        for step in steps:
            step["state"] = {"running": "killed", "pending": "skipped"}.get(
                step["state"], step["state"]
            )


class _Handler(BaseHTTPRequestHandler):
    """Turns HTTP into :meth:`FakeWoodpecker.handle` calls; keep-alive like gin's server."""

    state: FakeWoodpecker
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one segment: unbuffered writes plus Nagle's algorithm and
    # delayed ACKs would add ~40 ms to every request.
    wbufsize = -1
    disable_nagle_algorithm = True
    #: An idle kept-alive connection is dropped after this many seconds.
    timeout = 10

    def setup(self) -> None:
        super().setup()
        self.state._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.state._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        """Quiet: tests read the journal (``FakeWoodpecker.requests``), not stderr."""

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = None
        status, payload = self.state.handle(
            self.command,
            url.path,
            parse_qs(url.query),
            body,
            self.headers.get("Authorization"),
        )
        if payload is None:
            data, ctype = b"", None
        elif isinstance(payload, str):
            data, ctype = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json; charset=utf-8"
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    # http.server dispatches on these names.
    do_GET = do_POST = do_PATCH = do_DELETE = _serve  # noqa: N815


def running_fake(token: str = DEFAULT_TOKEN) -> Iterator[FakeWoodpecker]:
    """Generator for a fixture: a started fake, stopped afterwards whatever happens."""
    fake = FakeWoodpecker(token).start()
    try:
        yield fake
    finally:
        fake.stop()
