"""Bad input gets a clear JSON error with the right status, and loses nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from forgeline.domain.inputs import MAX_JSON_CHARS, MAX_JSON_DEPTH, TOO_DEEP
from forgeline.domain.project import Project
from forgeline.domain.task import BuildSpec, TaskStatus
from forgeline.services.auth import AuthService, Role
from forgeline.services.builds import BuildRequest
from tests.conftest import free_port
from tests.support.forgeline_server import Running, running_forgeline, server_settings


@pytest.fixture
async def api(tmp_path: Path, claude_bin: Path) -> AsyncIterator[Running]:
    """forgeline with no workers: requests are accepted and stay queued."""
    settings = server_settings(
        tmp_path / "data", claude_bin, workers=0, max_queued_per_project=2, max_body_bytes=4096
    )
    async with running_forgeline(settings) as running:
        await running.create_project("app")
        yield running


def error_of(response: httpx.Response) -> dict[str, str]:
    """The ``error`` object of a JSON error answer."""
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, str] = response.json()["error"]
    assert error["code"]
    assert error["message"]
    return error


async def test_health_routes_need_no_token(api: Running) -> None:
    """/healthz, /readyz and /metrics answer without a token."""
    async with httpx.AsyncClient(base_url=api.url) as anonymous:
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get("/readyz")).json() == {"status": "ready"}
        metrics = await anonymous.get("/metrics")
        assert metrics.status_code == 200
        assert "forgeline_queue_depth" in metrics.text


async def test_missing_and_wrong_tokens_are_401(api: Running) -> None:
    """No token, a malformed header or an unknown token: 401 with WWW-Authenticate."""
    async with httpx.AsyncClient(base_url=api.url) as anonymous:
        for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer nope"}):
            response = await anonymous.get("/projects", headers=headers)
            assert response.status_code == 401
            assert error_of(response)["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"


async def test_builder_token_cannot_manage_credentials(api: Running) -> None:
    """A builder token may build but not touch credentials or create projects: 403."""
    new = await AuthService(api.container.store).create("bot", Role.BUILDER)
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {new.value}"}
    ) as bot:
        assert (await bot.get("/credentials")).status_code == 403
        assert (await bot.post("/projects", json={"name": "x"})).status_code == 403
        ok = await bot.post("/project/app/build", json={"prompt": "hi"})
        assert ok.status_code == 202


async def test_unknown_project_and_task_are_404(api: Running) -> None:
    """Unknown project or task: 404 naming it."""
    response = await api.client.post("/project/ghost/build", json={"prompt": "hi"})
    assert response.status_code == 404
    assert "ghost" in error_of(response)["message"]
    assert (await api.client.get("/projects/ghost")).status_code == 404
    response = await api.client.get("/tasks/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert error_of(response)["code"] == "task_not_found"
    assert (await api.client.get("/tasks/nope/events")).status_code == 404


@pytest.mark.parametrize("name", ["My_App", "../etc", "a/b", "-x", "x" * 64])
async def test_invalid_project_names_are_422(api: Running, name: str) -> None:
    """Names outside [a-z0-9-] or with path tricks: 422, and nothing created."""
    response = await api.client.post("/projects", json={"name": name})
    assert response.status_code == 422
    error_of(response)
    names = [p["name"] for p in (await api.client.get("/projects")).json()["items"]]
    assert names == ["app"]


async def test_duplicate_project_is_409(api: Running) -> None:
    """Creating a project twice: 409."""
    response = await api.client.post("/projects", json={"name": "app"})
    assert response.status_code == 409
    assert error_of(response)["code"] == "project_exists"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "timeout_s": 0}, "timeout_s"),
        ({"prompt": "x", "timeout_s": 10**9}, "timeout_s"),
        ({"prompt": "x", "surprise": 1}, "surprise"),
        ({}, "prompt"),
    ],
)
async def test_invalid_build_specs_are_422_with_fields(
    api: Running, body: dict[str, object], field: str
) -> None:
    """Invalid specs: 422 naming the field."""
    response = await api.client.post("/project/app/build", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert field in [f["field"] for f in error["fields"]]


async def test_blank_prompt_is_422(api: Running) -> None:
    """A whitespace-only prompt: 422 prompt_required."""
    response = await api.client.post("/project/app/build", json={"prompt": "   "})
    assert response.status_code == 422
    assert error_of(response)["code"] == "prompt_required"


async def test_unknown_provider_and_refused_callback_are_422(api: Running) -> None:
    """An unknown provider lists the known ones; a link-local callback is refused."""
    response = await api.client.post(
        "/project/app/build", json={"prompt": "x", "provider": "no-such-agent"}
    )
    assert response.status_code == 422
    assert "claude-code" in error_of(response)["message"]
    response = await api.client.post(
        "/project/app/build",
        json={"prompt": "x", "callback_url": "http://169.254.169.254/latest/meta-data"},
    )
    assert response.status_code == 422


async def test_malformed_json_is_400(api: Running) -> None:
    """A body that is not JSON: 400 malformed_json."""
    response = await api.client.post(
        "/project/app/build", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert error_of(response)["code"] == "malformed_json"


async def test_huge_body_is_413(api: Running) -> None:
    """A body over the configured limit: 413, by length or while streaming."""
    response = await api.client.post("/project/app/build", json={"prompt": "x" * 10_000})
    assert response.status_code == 413
    assert error_of(response)["code"] == "too_large"

    # Chunked, no Content-Length: the limit applies while the body streams in. A raw
    # socket, because an HTTP client may still be sending when the 413 arrives.
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = b'{"prompt": "' + b"x" * 10_000 + b'"}'
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 1000]), body[i : i + 1000])
        for i in range(0, len(body), 1000)
    )
    writer.write(
        b"POST /project/app/build HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {api.token}\r\n".encode()
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked
        + b"0\r\n\r\n"
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.split()[1] == b"413"


async def test_queue_cap_per_project_is_429(api: Running) -> None:
    """Past the cap of queued builds of one project: 429; other projects are unaffected; a
    retry of an accepted request (same Idempotency-Key) still gets its task."""
    accepted = []
    for i in range(2):
        response = await api.client.post(
            "/project/app/build", json={"prompt": "x"}, headers={"Idempotency-Key": f"k{i}"}
        )
        assert response.status_code == 202
        accepted.append(response.json()["task_id"])
    response = await api.client.post("/project/app/build", json={"prompt": "x"})
    assert response.status_code == 429
    assert error_of(response)["code"] == "capacity"
    retry = await api.client.post(
        "/project/app/build", json={"prompt": "x"}, headers={"Idempotency-Key": "k1"}
    )
    assert retry.status_code == 200
    assert retry.json()["task_id"] == accepted[1]
    await api.create_project("other")
    assert (await api.client.post("/project/other/build", json={"prompt": "x"})).status_code == 202


async def test_credentials_are_write_only(api: Running) -> None:
    """PUT stores, GET lists without values, DELETE removes; no route returns the value."""
    value = "sk-live-very-secret-value-42"
    response = await api.client.put("/credentials/anthropic-key", json={"value": value})
    assert response.status_code == 200
    assert value not in response.text
    scoped = await api.client.put(
        "/credentials/anthropic-key", params={"project": "app"}, json={"value": value + "-p"}
    )
    assert scoped.status_code == 200
    listed = await api.client.get("/credentials")
    assert value not in listed.text
    assert {(c["name"], c["project"]) for c in listed.json()} == {
        ("anthropic-key", None),
        ("anthropic-key", "app"),
    }
    unknown_scope = await api.client.put(
        "/credentials/x", params={"project": "ghost"}, json={"value": value}
    )
    assert unknown_scope.status_code == 404
    assert value not in unknown_scope.text
    assert (await api.client.delete("/credentials/anthropic-key")).status_code == 204
    missing = await api.client.delete("/credentials/anthropic-key")
    assert missing.status_code == 404
    assert value not in missing.text


async def test_openapi_is_served(api: Running) -> None:
    """The OpenAPI document lists the public routes."""
    async with httpx.AsyncClient(base_url=api.url) as anonymous:
        spec = (await anonymous.get("/openapi.json")).json()
    for path in ("/projects", "/project/{name}/build", "/tasks/{task_id}/events", "/credentials"):
        assert path in spec["paths"]


# --- hostile input: every field bounded and clean, every database -----------------------------

JSON = {"content-type": "application/json"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def served(
    request: pytest.FixtureRequest, tmp_path: Path, claude_bin: Path
) -> AsyncIterator[Running]:
    """forgeline with no workers and the default body limit, on each database."""
    overrides: dict[str, Any] = {}
    if request.param == "postgres":
        overrides["database_url"] = request.getfixturevalue("pg_url")
    settings = server_settings(tmp_path / "data", claude_bin, workers=0, **overrides)
    async with running_forgeline(settings) as running:
        await running.create_project("app")
        yield running


def nested(depth: int, leaf: str = '"x"') -> str:
    """JSON text of objects nested ``depth`` deep around ``leaf``."""
    return '{"a":' * depth + leaf + "}" * depth


def fields_of(response: httpx.Response) -> list[str]:
    """The fields a 422 names."""
    assert response.status_code == 422, response.text
    return [f["field"] for f in response.json()["error"]["fields"]]


async def assert_nothing_stored(running: Running) -> None:
    """Only the fixture's project exists and no task was queued; every list still answers."""
    projects = await running.client.get("/projects")
    assert projects.status_code == 200, projects.text
    assert [p["name"] for p in projects.json()["items"]] == ["app"]
    assert await running.container.queue.count(status=TaskStatus.QUEUED) == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/project/app/build", '{"prompt": "x", "variables": %s}', "variables"),
        ("/projects", '{"name": "deep", "variables": %s}', "variables"),
        ("/projects", '{"name": "deep", "settings": %s}', "settings"),
    ],
)
async def test_deeply_nested_json_is_422(served: Running, path: str, body: str, field: str) -> None:
    """Free-form JSON nested past MAX_JSON_DEPTH (33, 250 or 900 levels) is a 422 naming the
    field, nothing is stored, and every read still answers; 32 levels are accepted whole."""
    for depth in (MAX_JSON_DEPTH + 1, 250, 900):
        response = await served.client.post(
            path, content=(body % nested(depth)).encode(), headers=JSON
        )
        assert fields_of(response) == [field]
        assert "nested deeper than 32 levels" in error_of(response)["message"]
    await assert_nothing_stored(served)

    response = await served.client.post(
        path, content=(body % nested(MAX_JSON_DEPTH)).encode(), headers=JSON
    )
    assert response.status_code in (201, 202), response.text
    shown = (
        (await served.task(response.json()["task_id"]))["spec"]
        if path.startswith("/project/")
        else (await served.client.get("/projects/deep")).json()
    )
    assert json.dumps(shown[field], separators=(",", ":")) == nested(MAX_JSON_DEPTH)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "variables": {"big": "x" * (MAX_JSON_CHARS + 1)}}, "variables"),
        ({"prompt": "x", "variables": {"n": float("nan")}}, "variables"),
        ({"prompt": "x", "variables": {"n": float("inf")}}, "variables"),
        ({"prompt": "x", "timeout_s": float("inf")}, "timeout_s"),
        ({"prompt": "x", "timeout_s": 10**400}, "timeout_s"),
    ],
)
async def test_oversized_and_non_finite_values_are_422(
    served: Running, body: dict[str, Any], field: str
) -> None:
    """A free-form field over MAX_JSON_CHARS, or a number JSON cannot carry (NaN, Infinity,
    which Python's parser accepts), is a 422 naming the field; nothing is stored."""
    content = json.dumps(body).encode()  # allow_nan: the point is to send them
    response = await served.client.post("/project/app/build", content=content, headers=JSON)
    assert field in fields_of(response)
    await assert_nothing_stored(served)


async def test_deep_data_stored_by_an_older_version_is_served(served: Running) -> None:
    """A task and a project stored 500 levels deep (before requests were bounded) are shown,
    cut at MAX_JSON_DEPTH with a marker, still redacted; the task can be cancelled; the
    project list answers. Before, each of these was a 500 for everyone."""
    secret = "older-version-secret-7f3a9c"
    assert (await served.client.put("/credentials/old-key", json={"value": secret})).status_code
    deep: dict[str, Any] = {"token": secret}
    for _ in range(500):
        deep = {"a": deep}
    variables = {"token": secret, "deep": deep}
    request = BuildRequest("app", BuildSpec(prompt="x", variables=variables))
    queued = await served.container.queue.enqueue(
        "build", request.to_payload(), concurrency_key="app"
    )
    await served.container.store.create_project(
        Project(name="old", repo_url="/nowhere.git", variables=variables, settings=variables)
    )

    shown = await served.client.get(f"/tasks/{queued.task.id}")
    assert shown.status_code == 200, shown.text
    assert secret not in shown.text
    assert shown.json()["spec"]["variables"]["token"] == "[REDACTED:old-key]"
    assert TOO_DEEP in shown.text
    cancelled = await served.client.post(f"/tasks/{queued.task.id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    for path in ("/projects", "/projects/old"):
        response = await served.client.get(path)
        assert response.status_code == 200, response.text
        assert TOO_DEEP in response.text
    events = await served.events(queued.task.id)
    assert events[-1]["data"]["status"] == "cancelled"


async def test_out_of_range_event_positions_are_422(served: Running) -> None:
    """``?after`` and ``Last-Event-ID`` beyond a signed 64-bit integer, negative, or spelled
    with other than ASCII digits (``²``, Arabic-Indic digits) are a 422 in both formats,
    never a 500 or a broken stream; the largest position is a valid, empty resume."""
    task_id = await served.build("app", prompt="x")
    await served.client.post(f"/tasks/{task_id}/cancel")  # final: its stream ends
    bad: list[tuple[dict[str, str], dict[str, str | bytes]]] = [
        ({"after": str(2**63)}, {}),
        ({"after": str(10**30)}, {}),
        ({"after": "-1"}, {}),
        ({"after": "²"}, {}),
        ({"after": "\u0661\u0662"}, {}),  # Arabic-Indic 12: int() would take it
        ({}, {"Last-Event-ID": str(10**30)}),
        ({}, {"Last-Event-ID": str(2**63)}),
        ({}, {"Last-Event-ID": "²".encode("latin-1")}),
        ({}, {"Last-Event-ID": "\u0661".encode()}),
        ({}, {"Last-Event-ID": "-5"}),
        ({}, {"Last-Event-ID": "abc"}),
    ]
    for params, headers in bad:
        for fmt in ("json", "sse"):
            response = await served.client.get(
                f"/tasks/{task_id}/events",
                params={**params, "format": fmt},
                # Raw bytes (not UTF-8) in a header is the point; httpx sends them as given.
                headers=headers,  # type: ignore[arg-type]
            )
            assert response.status_code == 422, (params, headers, fmt, response.text)
            error_of(response)
    last = str(2**63 - 1)
    for at_most, header in [({"after": last}, {}), ({}, {"Last-Event-ID": last})]:
        response = await served.client.get(
            f"/tasks/{task_id}/events", params={**at_most, "format": "json"}, headers=header
        )
        assert (response.status_code, response.json()) == (200, [])
    assert await served.events(task_id, last_event_id=2**63 - 1) == []
    assert [e["type"] for e in await served.events(task_id)] == ["result"]


BUILD = ("POST", "/project/app/build")
PROJECT = ("POST", "/projects")


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        (BUILD, {"prompt": "AAA\u0000BBB"}, "prompt"),
        (BUILD, {"prompt": "clear \u001b[2J"}, "prompt"),
        (BUILD, {"prompt": "x", "resume_session": "s\u0000id"}, "resume_session"),
        (BUILD, {"prompt": "x", "resume_session": "s\nid"}, "resume_session"),
        (BUILD, {"prompt": "x", "model": "sonnet\u0000"}, "model"),
        (BUILD, {"prompt": "x", "provider": "claude-code\u0000"}, "provider"),
        (BUILD, {"prompt": "x", "template": "static-site\r"}, "template"),
        (BUILD, {"prompt": "x", "variables": {"t": "a\u0000b"}}, "variables"),
        (BUILD, {"prompt": "x", "variables": {"a\nb": "x"}}, "variables"),
        (BUILD, {"prompt": "x", "variables": {"l": [{"b": "\u0007"}]}}, "variables"),
        (BUILD, {"prompt": "x", "variables": {"t": "\u0085"}}, "variables"),
        (BUILD, {"prompt": "x", "callback_url": "http://127.0.0.1/\u0000"}, "callback_url"),
        (PROJECT, {"name": "n\u0000"}, "name"),
        (PROJECT, {"name": "n", "variables": {"t": "\u0000"}}, "variables"),
        (PROJECT, {"name": "n", "settings": {"t": "\u007f"}}, "settings"),
        (PROJECT, {"name": "n", "credentials": {"K": "c\u0000"}}, "credentials.K"),
        (PROJECT, {"name": "n", "repo_url": "https://h/x\u0000.git"}, "repo_url"),
        (("PUT", "/credentials/k"), {"value": "sec\u0000ret"}, "value"),
    ],
)
async def test_control_characters_are_422(
    served: Running, route: tuple[str, str], body: dict[str, Any], field: str
) -> None:
    """Control characters (NUL, escape, bell, DEL, C1) in prompts, names, session ids,
    variables (keys and nested values), URLs and secret values are a 422 naming the field,
    and nothing is stored: before, a NUL cut the prompt the agent saw (SQLite) or was a 503
    (PostgreSQL)."""
    response = await served.client.request(*route, json=body)
    assert field in fields_of(response)
    assert "U+" in error_of(response)["message"]
    await assert_nothing_stored(served)
    assert await served.container.credentials.list() == []


async def test_tab_newline_and_crlf_are_kept(served: Running) -> None:
    """Prompts keep tab, newline and CR LF; variables tab and newline; all as sent."""
    prompt = "Line one\r\n\tLine two\nLine three"
    variables = {"title": "Two\nlines\tand a tab", "list": ["a\tb"]}
    task_id = await served.build("app", prompt=prompt, variables=variables)
    spec = (await served.task(task_id))["spec"]
    assert (spec["prompt"], spec["variables"]) == (prompt, variables)


async def test_ids_with_control_characters_are_404(served: Running) -> None:
    """A NUL in a task id or project name in the path is a 404 (no such thing can exist), on
    PostgreSQL too, where it reached the database and was a 503."""
    for method, path in [
        ("GET", "/tasks/a%00b"),
        ("POST", "/tasks/a%00b/cancel"),
        ("GET", "/tasks/a%00b/events"),
        ("GET", "/projects/a%00b"),
        ("POST", "/project/a%00b/build"),
    ]:
        response = await served.client.request(method, path, json={"prompt": "x"})
        assert response.status_code == 404, (path, response.text)
        assert error_of(response)["code"] in ("task_not_found", "project_not_found")


async def test_idempotency_key_reused_for_another_request_is_422(served: Running) -> None:
    """The same Idempotency-Key with the same request (defaults spelled out or not) gives
    the first task back; with another body it is a 422 saying the key was used for another
    request, and nothing is queued. Keys are scoped per token and per project."""
    headers = {"Idempotency-Key": "order-42"}
    first = await served.client.post("/project/app/build", json={"prompt": "x"}, headers=headers)
    assert first.status_code == 202
    task_id = first.json()["task_id"]
    for body in ({"prompt": "x"}, {"prompt": "x", "timeout_s": 1800, "auto_deploy": True}):
        again = await served.client.post("/project/app/build", json=body, headers=headers)
        assert (again.status_code, again.json()["task_id"]) == (200, task_id)
    other = await served.client.post("/project/app/build", json={"prompt": "y"}, headers=headers)
    assert other.status_code == 422
    error = error_of(other)
    assert error["code"] == "idempotency_key_reused"
    assert "order-42" in error["message"]
    assert "another request" in error["message"]
    assert await served.container.queue.count(status=TaskStatus.QUEUED) == 1

    bot = await AuthService(served.container.store).create("bot", Role.BUILDER)
    as_bot = {**headers, "Authorization": f"Bearer {bot.value}"}
    theirs = await served.client.post("/project/app/build", json={"prompt": "y"}, headers=as_bot)
    assert theirs.status_code == 202
    assert theirs.json()["task_id"] != task_id
    await served.create_project("other")
    elsewhere = await served.client.post(
        "/project/other/build", json={"prompt": "y"}, headers=headers
    )
    assert elsewhere.status_code == 202


async def test_concurrent_requests_with_one_key_make_one_task(served: Running) -> None:
    """Requests racing with one key: one is accepted, the same body gets its task back, the
    other body a 422; exactly one task exists."""
    headers = {"Idempotency-Key": "race"}
    bodies = [{"prompt": "a"}, {"prompt": "b"}] * 4
    responses = await asyncio.gather(
        *(served.client.post("/project/app/build", json=b, headers=headers) for b in bodies)
    )
    assert sorted(r.status_code for r in responses).count(202) == 1
    [winner] = [b for b, r in zip(bodies, responses, strict=True) if r.status_code == 202]
    task_id = next(r.json()["task_id"] for r in responses if r.status_code == 202)
    for body, response in zip(bodies, responses, strict=True):
        if body == winner:
            assert response.json()["task_id"] == task_id
        else:
            assert response.status_code == 422
    assert await served.container.queue.count(status=TaskStatus.QUEUED) == 1


# --- values that would only fail later are refused when they are sent -------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"credentials": {"BAD-NAME": "deploy-token"}}, "credentials"),
        ({"credentials": {"1ST": "deploy-token"}}, "credentials"),
        ({"credentials": {"TOKEN": "no spaces please"}}, "credentials"),
        ({"template": "no-such-template"}, "template"),
        ({"repo_url": "file://{elsewhere}"}, "repo_url"),
        ({"repo_url": "{elsewhere}"}, "repo_url"),
        ({"repo_url": "relative/path.git"}, "repo_url"),
        ({"repo_url": "ext::sh -c touch% /tmp/pwned"}, "repo_url"),
    ],
)
async def test_project_values_that_would_fail_later_are_422(
    api: Running, tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    """Credential mappings with names no environment or store can hold, an unknown
    template, and a remote that is a path outside forgeline's git directory are a 422
    naming the field, and nothing is created (on disk neither)."""
    elsewhere = tmp_path / "elsewhere.git"
    if "repo_url" in body:
        body = {"repo_url": body["repo_url"].replace("{elsewhere}", str(elsewhere))}
    response = await api.client.post("/projects", json={"name": "later", **body})
    assert response.status_code == 422, response.text
    assert error_of(response)["message"].startswith(f"{field}: ")
    assert field in fields_of(response)
    assert (await api.client.get("/projects/later")).status_code == 404
    assert not await asyncio.to_thread(elsewhere.exists)


async def test_embedded_repositories_stay_allowed(api: Running) -> None:
    """A path under the git directory (a repository forgeline made itself) is still a remote,
    but not one that climbs out of it with ``..``."""
    base = api.settings.git_base_url
    shared = await api.create_project("shared", repo_url=f"{base}/team/shared.git")
    assert shared["state"] == "ready"
    assert await asyncio.to_thread((Path(base) / "team" / "shared.git" / "HEAD").exists)
    climbing = await api.client.post(
        "/projects", json={"name": "climb", "repo_url": f"{base}/../outside.git"}
    )
    assert fields_of(climbing) == ["repo_url"]


async def test_unreachable_remote_is_424(api: Running) -> None:
    """A remote nobody answers at is a 424 naming repo_url and git's reason (was a 500)."""
    url = f"http://127.0.0.1:{free_port()}/nobody.git"
    response = await api.client.post("/projects", json={"name": "remote", "repo_url": url})
    assert response.status_code == 424, response.text
    error = error_of(response)
    assert error["code"] == "remote_unavailable"
    assert error["message"].startswith(f"repo_url: cannot use the remote {url}: ")
    assert (await api.client.get("/projects")).status_code == 200


async def test_build_values_that_would_fail_later_are_refused(api: Running) -> None:
    """A build naming an unknown template is a 422; a build of a project whose declared
    credential exists in no scope is a 424 naming both names, and is accepted once the
    credential is stored (globally or for the project)."""
    response = await api.client.post(
        "/project/app/build", json={"prompt": "x", "template": "no-such-template"}
    )
    assert fields_of(response) == ["template"]
    assert "no-such-template" in error_of(response)["message"]

    await api.create_project("vault", credentials={"DEPLOY_TOKEN": "deploy-token"})
    response = await api.client.post("/project/vault/build", json={"prompt": "x"})
    assert response.status_code == 424, response.text
    error = error_of(response)
    assert error["code"] == "credential_missing"
    assert "'deploy-token' (for DEPLOY_TOKEN)" in error["message"]
    assert await api.container.queue.count(status=TaskStatus.QUEUED) == 0
    stored = await api.client.put(
        "/credentials/deploy-token", params={"project": "vault"}, json={"value": "v-123456"}
    )
    assert stored.status_code == 200
    assert (await api.client.post("/project/vault/build", json={"prompt": "x"})).status_code == 202


async def test_unavailable_provider_is_424_where_builds_run(
    tmp_path: Path, claude_bin: Path
) -> None:
    """A server that runs builds itself refuses one for a provider whose program it cannot
    start: 424 naming the provider and why, and nothing is queued."""
    settings = server_settings(
        tmp_path / "data", claude_bin, workers=1, opencode_bin=str(tmp_path / "no-opencode")
    )
    async with running_forgeline(settings) as running:
        await running.create_project("app")
        response = await running.client.post(
            "/project/app/build", json={"prompt": "x", "provider": "opencode"}
        )
        assert response.status_code == 424, response.text
        error = error_of(response)
        assert error["code"] == "agent_unavailable"
        assert "provider 'opencode' is not available here" in error["message"]
        assert "no-opencode" in error["message"]
        assert await running.container.queue.count(status=TaskStatus.QUEUED) == 0


@asynccontextmanager
async def worker_of(running: Running) -> AsyncIterator[None]:
    """A build worker on the server's adapters (as on another machine), stopped at the end."""
    stop = asyncio.Event()
    worker = running.container.worker("test-worker", concurrency=1)
    task = asyncio.create_task(worker.run(stop), name="test-worker")
    try:
        yield
    finally:
        stop.set()
        await task


async def test_unavailable_provider_fails_the_build_saying_why(
    tmp_path: Path, claude_bin: Path
) -> None:
    """Where the API cannot know (its builds run elsewhere), the worker fails the build with
    a last_error saying why the agent could not run (was empty for opencode)."""
    settings = server_settings(
        tmp_path / "data", claude_bin, workers=0, opencode_bin=str(tmp_path / "no-opencode")
    )
    async with running_forgeline(settings) as running:
        await running.create_project("app")
        task_id = await running.build("app", prompt="x", provider="opencode")
        async with worker_of(running):
            task = await running.wait_status(task_id, {"failed", "completed"})
    assert task["status"] == "failed"
    assert "no-opencode" in task["last_error"]
    assert task["result"]["output"] == task["last_error"]


async def test_prompt_stored_with_nul_fails_the_build_saying_why(
    tmp_path: Path, claude_bin: Path
) -> None:
    """A prompt with a NUL stored by an older version never reaches the agent cut short:
    the build fails, and its last_error names the prompt and the character."""
    settings = server_settings(tmp_path / "data", claude_bin, workers=0)
    async with running_forgeline(settings) as running:
        await running.create_project("app")
        request = BuildRequest("app", BuildSpec(prompt="AAA\u0000BBB"))
        queued = await running.container.queue.enqueue(
            "build", request.to_payload(), concurrency_key="app"
        )
        async with worker_of(running):
            task = await running.wait_status(queued.task.id, {"failed", "completed"})
    assert task["status"] == "failed"
    assert "prompt: contains the character U+0000 at offset 3" in task["last_error"]
