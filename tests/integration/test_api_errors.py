"""Bad input gets a clear JSON error with the right status, and loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from forgeline.services.auth import AuthService, Role
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
    names = [p["name"] for p in (await api.client.get("/projects")).json()]
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
        "/project/app/build", json={"prompt": "x", "provider": "codex"}
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
