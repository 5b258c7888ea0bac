"""The everyday operations around builds, each through the HTTP API and through the CLI,
with the real ``claude`` against the scripted model: listing and paging tasks and projects,
a build's diff and transcript, re-running a build, follow-up builds that continue the
agent's session, changing and deleting projects, listing and revoking tokens and tokens
limited to projects; and the conventions every answer follows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from tests.support.anthropic_server import AnthropicServer, ApiError, always
from tests.support.forgeline_server import Running, git, running_forgeline, server_settings
from tests.support.forgeline_server import run_cli as cli

pytestmark = pytest.mark.claude


@pytest.fixture
async def forgeline(
    tmp_path: Path, claude_bin: Path, model: AnthropicServer
) -> AsyncIterator[Running]:
    """forgeline running builds with two in-process workers, on embedded SQLite."""
    async with running_forgeline(server_settings(tmp_path / "data", claude_bin)) as running:
        yield running


@pytest.fixture
async def idle(tmp_path: Path, claude_bin: Path) -> AsyncIterator[Running]:
    """forgeline without workers (builds stay queued), at most one queued build a project."""
    settings = server_settings(tmp_path / "idle", claude_bin, workers=0, max_queued_per_project=1)
    async with running_forgeline(settings) as running:
        await running.create_project("app")
        yield running


async def finished(running: Running, project: str, **spec: Any) -> dict[str, Any]:
    """POST a build and wait for its end; the task."""
    task_id = await running.build(project, **spec)
    return await running.wait_status(task_id, {"completed", "failed", "cancelled"})


def error_code(response: httpx.Response) -> str:
    """The ``error.code`` of an error answer."""
    code: str = response.json()["error"]["code"]
    return code


async def test_tasks_and_projects_are_listed_filtered_and_paged(forgeline: Running) -> None:
    """GET /tasks filters by project, status and time and pages newest first by cursor;
    GET /projects pages by name; task list shows the same."""
    for name in ("alpha", "beta"):
        await forgeline.create_project(name)
    first = await finished(forgeline, "alpha", prompt="create hello.txt")
    second = await finished(forgeline, "alpha", prompt="say hi")
    other = await finished(forgeline, "beta", prompt="say hi")
    client = forgeline.client

    listed = (await client.get("/tasks", params={"project": "alpha"})).json()
    assert [t["task_id"] for t in listed["items"]] == [second["task_id"], first["task_id"]]
    assert listed["next_cursor"] is None
    assert listed["items"][0]["spec"]["prompt"] == "say hi"
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/tasks", params=params)).json()
        seen += [t["task_id"] for t in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == [other["task_id"], second["task_id"], first["task_id"]]
    completed = await client.get("/tasks", params={"status": "completed", "project": "beta"})
    assert [t["task_id"] for t in completed.json()["items"]] == [other["task_id"]]
    assert (await client.get("/tasks", params={"status": "queued"})).json()["items"] == []
    since = {"since": first["created_at"]}
    assert len((await client.get("/tasks", params=since)).json()["items"]) == 3
    future = {"since": "2999-01-01T00:00:00Z"}
    assert (await client.get("/tasks", params=future)).json()["items"] == []
    for bad in ({"since": "yesterday"}, {"since": "2026-01-01T00:00:00"}, {"cursor": "x"}):
        refused = await client.get("/tasks", params=bad)
        assert refused.status_code == 422, (bad, refused.text)

    names: list[str] = []
    after = None
    while True:
        params = {"limit": 1, **({"cursor": after} if after else {})}
        page = (await client.get("/projects", params=params)).json()
        names += [p["name"] for p in page["items"]]
        if (after := page["next_cursor"]) is None:
            break
    assert names == ["alpha", "beta"]

    shown = await cli(forgeline, "task", "list", "--project", "alpha", "--json")
    assert shown.returncode == 0, shown.stderr
    assert [t["task_id"] for t in json.loads(shown.stdout)["items"]] == [
        second["task_id"],
        first["task_id"],
    ]
    table = await cli(forgeline, "task", "list", "--limit", "2")
    assert table.returncode == 0, table.stderr
    assert other["task_id"] in table.stdout
    assert first["task_id"] not in table.stdout
    assert "more: --cursor" in table.stderr


async def test_diff_and_log_of_a_build(forgeline: Running) -> None:
    """GET /tasks/{id}/diff is the pushed commit's patch, read from the project's bare
    repository (the build's checkout is gone); /log is a plain transcript; task diff and
    task log print them. A build that pushed nothing has no diff (404)."""
    await forgeline.create_project("site")
    task = await finished(forgeline, "site", prompt="create hello.txt")
    sha = task["result"]["artifacts"]["commit_sha"]
    checkouts = forgeline.settings.data_dir / "checkouts" / "site"
    deadline = asyncio.get_running_loop().time() + 10
    while list(checkouts.iterdir()):  # the attempt removes its checkout just after it ends
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)

    diff = await forgeline.client.get(f"/tasks/{task['task_id']}/diff")
    assert diff.status_code == 200, diff.text
    assert diff.headers["content-type"].startswith("text/x-diff")
    bare = Path(forgeline.settings.git_base_url) / "site.git"
    assert diff.text == git("show", "--format=", sha, cwd=bare) + "\n"
    assert "+hello from the fake API" in diff.text

    log = await forgeline.client.get(f"/tasks/{task['task_id']}/log")
    assert log.status_code == 200
    assert log.headers["content-type"].startswith("text/plain")
    lines = log.text.splitlines()
    assert "[1] status" in lines[0]
    assert any("tool_use    Write" in line for line in lines)
    assert "result" in [line.split()[2] for line in lines if line[:1] != " "][-1]

    printed = await cli(forgeline, "task", "diff", task["task_id"])
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == diff.text
    transcript = await cli(forgeline, "task", "log", task["task_id"])
    assert transcript.stdout == log.text

    quiet = await finished(forgeline, "site", prompt="say hi")
    none = await forgeline.client.get(f"/tasks/{quiet['task_id']}/diff")
    assert none.status_code == 404
    assert error_code(none) == "no_commit"
    missing = await cli(forgeline, "task", "diff", quiet["task_id"])
    assert missing.returncode == 1
    assert "no pushed commit" in missing.stderr


async def test_retry_runs_a_finished_build_again(
    forgeline: Running, model: AnthropicServer, idle: Running
) -> None:
    """POST /tasks/{id}/retry queues a new task with the same spec, linked by retry_of
    (202, Location); task retry --wait follows it. A build still queued cannot be retried."""
    await forgeline.create_project("flaky")
    model.script = always(ApiError(500))
    failed = await finished(forgeline, "flaky", prompt="create hello.txt", timeout_s=300)
    assert failed["status"] == "failed"
    from tests.support.anthropic_server import hello_script

    model.script = hello_script
    retried = await forgeline.client.post(f"/tasks/{failed['task_id']}/retry")
    assert retried.status_code == 202, retried.text
    new_id = retried.json()["task_id"]
    assert retried.headers["location"] == f"/tasks/{new_id}"
    again = await forgeline.wait_status(new_id, {"completed", "failed"})
    assert again["status"] == "completed"
    assert again["retry_of"] == failed["task_id"]
    assert again["spec"] == failed["spec"]

    by_cli = await cli(forgeline, "task", "retry", new_id, "--wait", "--json")
    assert by_cli.returncode == 0, by_cli.stderr
    third = json.loads(by_cli.stdout.splitlines()[-1])["task_id"]
    assert (await forgeline.task(third))["retry_of"] == new_id

    queued = await idle.build("app", prompt="x")
    refused = await idle.client.post(f"/tasks/{queued}/retry")
    assert refused.status_code == 409
    assert error_code(refused) == "task_state"


async def test_follow_up_builds_continue_the_agent_session(
    forgeline: Running, model: AnthropicServer
) -> None:
    """ "continue": true resumes the session of the project's last completed build (the
    model sees the earlier conversation); without one a new session starts and the events
    say so; build --continue and --resume do the same from the CLI."""
    await forgeline.create_project("chat")
    fresh = await cli(forgeline, "build", "chat", "-p", "say hi", "--continue", "--wait", "--json")
    assert fresh.returncode == 0, fresh.stderr
    events = [json.loads(line) for line in fresh.stdout.splitlines()]
    assert any(e["data"].get("state") == "new_session" for e in events)

    first = await finished(forgeline, "chat", prompt="create hello.txt")
    session = first["result"]["agent"]["session_id"]
    follow = await cli(
        forgeline, "build", "chat", "-p", "what did you do?", "--continue", "--wait", "--json"
    )
    assert follow.returncode == 0, follow.stderr
    events = [json.loads(line) for line in follow.stdout.splitlines()]
    continuing = [e for e in events if e["data"].get("state") == "continuing"]
    assert continuing[0]["data"]["session_id"] == session
    assert events[-1]["data"]["session_id"] == session
    sent = json.dumps(model.message_requests[-1].messages)
    assert "create hello.txt" in sent
    assert "hello from the fake API" in sent

    resumed = await cli(
        forgeline, "build", "chat", "-p", "and now?", "--resume", session, "--wait", "--json"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.splitlines()[-1])["data"]["session_id"] == session
    both = await forgeline.client.post(
        "/project/chat/build", json={"prompt": "x", "continue": True, "resume_session": session}
    )
    assert both.status_code == 422
    assert [f["field"] for f in both.json()["error"]["fields"]] == ["continue"]


async def test_projects_are_updated_and_deleted(
    forgeline: Running, model: AnthropicServer, idle: Running
) -> None:
    """PATCH /projects/{name} merges credentials and settings and sets the default provider
    and model (which the next build uses); DELETE refuses while a build is queued, then
    says what it removed; project update and project delete do the same."""
    await forgeline.create_project("site")
    patched = await forgeline.client.patch(
        "/projects/site",
        json={
            "settings": {"deploy_url": "https://site.example", "owner": "me"},
            "default_provider": "claude-code",
            "default_model": "claude-test-model",
        },
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["settings"]["owner"] == "me"
    task = await finished(forgeline, "site", prompt="create hello.txt")
    assert model.message_requests[-1].body["model"] == "claude-test-model"
    assert task["result"]["artifacts"]["deploy_url"] == "https://site.example"
    unknown = await forgeline.client.patch("/projects/site", json={"default_provider": "nope"})
    assert unknown.status_code == 422
    assert "known providers" in unknown.json()["error"]["message"]

    updated = await cli(
        forgeline,
        "project",
        "update",
        "site",
        "--setting",
        "owner=",
        "--credential",
        "API_KEY=site-key",
        "--model",
        "",
        "--json",
    )
    assert updated.returncode == 0, updated.stderr
    project = json.loads(updated.stdout)
    assert "owner" not in project["settings"]
    assert project["credentials"] == {"API_KEY": "site-key"}
    assert project["default_model"] is None
    assert project["default_provider"] == "claude-code"

    await idle.client.put(
        "/credentials/app-key", json={"value": "v" * 12}, params={"project": "app"}
    )
    queued = await idle.build("app", prompt="x")
    busy = await idle.client.delete("/projects/app")
    assert busy.status_code == 409
    assert "1 queued" in busy.json()["error"]["message"]
    await idle.client.post(f"/tasks/{queued}/cancel")
    deleted = await cli(idle, "project", "delete", "app", "--yes", "--json")
    assert deleted.returncode == 0, deleted.stderr
    report = json.loads(deleted.stdout)
    assert "credential 'app-key' of the project" in report["removed"]
    assert any(kept.startswith("repository ") for kept in report["kept"])
    assert (await idle.client.get("/projects/app")).status_code == 404
    assert await idle.container.credentials.list() == []
    assert (await idle.client.get(f"/tasks/{queued}")).status_code == 200  # history stays


async def test_tokens_are_listed_revoked_and_limited_to_projects(forgeline: Running) -> None:
    """A builder token limited to a project sees and builds only that one; GET /tokens
    lists tokens without their secret; a revoked token is refused; token list and token
    revoke do the same from the CLI."""
    for name in ("mine", "theirs"):
        await forgeline.create_project(name)
    theirs = await finished(forgeline, "theirs", prompt="say hi")
    made = await cli(
        forgeline, "token", "create", "bot", "--role", "builder", "--project", "mine", "--json"
    )
    assert made.returncode == 0, made.stderr
    bot = json.loads(made.stdout)
    assert bot["projects"] == ["mine"]
    headers = {"Authorization": f"Bearer {bot['token']}"}
    async with httpx.AsyncClient(base_url=forgeline.url, headers=headers) as as_bot:
        projects = (await as_bot.get("/projects")).json()["items"]
        assert [p["name"] for p in projects] == ["mine"]
        assert (await as_bot.get("/projects/theirs")).status_code == 403
        refused = await as_bot.post("/project/theirs/build", json={"prompt": "x"})
        assert refused.status_code == 403
        assert (await as_bot.get(f"/tasks/{theirs['task_id']}")).status_code == 404
        assert (await as_bot.get("/tasks", params={"project": "theirs"})).status_code == 403
        built = await as_bot.post("/project/mine/build", json={"prompt": "say hi"})
        assert built.status_code == 202
        mine = built.json()["task_id"]
        listed = (await as_bot.get("/tasks")).json()["items"]
        assert [t["task_id"] for t in listed] == [mine]
        assert (await as_bot.get("/tokens")).status_code == 403
    await forgeline.wait_status(mine, {"completed"})

    tokens = (await forgeline.client.get("/tokens")).json()
    assert {t["name"]: t["projects"] for t in tokens} == {"admin": None, "bot": ["mine"]}
    assert bot["token"] not in json.dumps(tokens)
    own = next(t["id"] for t in tokens if t["name"] == "admin")
    itself = await forgeline.client.delete(f"/tokens/{own}")
    assert itself.status_code == 409
    shown = await cli(forgeline, "token", "list")
    assert shown.returncode == 0, shown.stderr
    assert "mine" in shown.stdout
    assert bot["token"] not in shown.stdout
    revoked = await cli(forgeline, "token", "revoke", bot["id"])
    assert revoked.returncode == 0, revoked.stderr
    gone = await cli(forgeline, "project", "list", token=bot["token"])
    assert gone.returncode == 1
    assert "401" in gone.stderr
    admin_limited = await cli(forgeline, "token", "create", "x", "--project", "mine")
    assert admin_limited.returncode == 1
    assert "only builder tokens" in admin_limited.stderr


async def test_every_answer_follows_the_conventions(forgeline: Running, idle: Running) -> None:
    """X-Request-ID echoed or made, one access log line per request; Location on 201 and
    202; Retry-After on 429; 415 for a body that is not JSON; Allow names every method of
    a path; metrics count requests by route template and time build steps by provider."""
    client = forgeline.client
    with capture_logs() as logs:
        echoed = await client.get("/projects", headers={"X-Request-ID": "req-42.a"})
        made = await client.get("/projects", headers={"X-Request-ID": "no spaces; or <tags>"})
    assert echoed.headers["x-request-id"] == "req-42.a"
    assert len(made.headers["x-request-id"]) == 32
    access = [entry for entry in logs if entry["event"] == "http.request"]
    assert [(e["method"], e["path"], e["status"], e["request_id"]) for e in access] == [
        ("GET", "/projects", 200, "req-42.a"),
        ("GET", "/projects", 200, made.headers["x-request-id"]),
    ]
    assert all(e["duration_ms"] >= 0 for e in access)

    created = await client.post("/projects", json={"name": "conv"})
    assert created.status_code == 201
    assert created.headers["location"] == "/projects/conv"
    task = await finished(forgeline, "conv", prompt="create hello.txt")
    form = await client.post(
        "/project/conv/build",
        content=b"prompt=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415
    assert "application/json" in form.json()["error"]["message"]
    not_allowed = await client.put("/projects")
    assert not_allowed.status_code == 405
    assert not_allowed.headers["allow"] == "GET, POST"

    await idle.build("app", prompt="first")
    full = await idle.client.post("/project/app/build", json={"prompt": "second"})
    assert full.status_code == 429
    assert full.headers["retry-after"] == str(full.json()["error"]["retry_after_s"])

    metrics = (await client.get("/metrics")).text
    assert (
        'forgeline_http_requests_total{method="GET",route="/tasks/{task_id}",status="200"}'
        in metrics
    )
    assert 'forgeline_builds_total{provider="claude-code",status="completed"} 1.0' in metrics
    assert 'forgeline_build_step_duration_seconds_count{outcome="ok",step="agent"} 1.0' in metrics
    assert task["status"] == "completed"
