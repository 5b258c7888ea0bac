"""Builds end to end: the HTTP API, the queue, a worker, the real ``claude`` CLI against the
scripted model, real git with a bare repository, and a signed callback to a real receiver."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest

from forgeline.domain.callbacks import verify, verify_webhook
from forgeline.domain.task import Lease, WorkTask
from tests.support.anthropic_server import (
    AnthropicServer,
    ApiError,
    ApiRequest,
    Reply,
    always,
    bash,
    hello_script,
    text,
)
from tests.support.callback_receiver import CallbackReceiver
from tests.support.forgeline_server import (
    CALLBACK_SECRET,
    Running,
    git,
    running_forgeline,
    server_settings,
)

pytestmark = pytest.mark.claude


def bare(running: Running, project: str) -> Path:
    """The embedded bare repository of ``project``."""
    return Path(running.settings.git_base_url) / f"{project}.git"


async def test_build_commits_pushes_and_calls_back(
    forgeline: Running, receiver: CallbackReceiver
) -> None:
    """POST a build → the agent's file is committed with the trailer and pushed → the signed
    callback carries the commit → the task is completed → SSE replays from Last-Event-ID."""
    project = await forgeline.create_project("myapp")
    assert project["state"] == "ready"
    task_id = await forgeline.build(
        "myapp", prompt="Create hello.txt please", callback_url=receiver.url()
    )
    events = await forgeline.events(task_id)
    assert events[-1]["type"] == "result"
    assert events[-1]["data"]["status"] == "succeeded"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events]
    assert "init" in types
    assert "tool_use" in types
    assert "tool_result" in types
    steps = [
        (e["data"]["step"], e["data"]["phase"])
        for e in events
        if e["type"] == "status" and e["data"]["state"] == "step"
    ]
    assert steps[:2] == [("checkout", "started"), ("checkout", "finished")]
    assert ("push", "finished") in steps

    repo = bare(forgeline, "myapp")
    head = git("rev-parse", "main", cwd=repo)
    assert git("show", "main:hello.txt", cwd=repo) == "hello from the fake API"
    message = git("log", "-1", "--format=%B", "main", cwd=repo)
    assert f"Forgeline-Task: {task_id}" in message
    assert message.startswith("Create hello.txt please")
    assert (
        git("log", "-1", "--format=%an <%ae>", "main", cwd=repo)
        == "forgeline <forgeline@localhost>"
    )

    [delivery] = await receiver.wait_for(1, timeout_s=20)
    assert delivery.signature_valid
    assert verify(delivery.body, CALLBACK_SECRET, delivery.header("X-Forgeline-Signature"))
    assert delivery.header("X-Forgeline-Event") == "build.completed"
    assert delivery.header("X-Forgeline-Delivery")
    # The Standard Webhooks signature covers the delivery id and the attempt's time too.
    standard = {name.lower(): value for name, value in delivery.headers.items()}
    assert standard["webhook-id"] == delivery.header("X-Forgeline-Delivery")
    assert verify_webhook(delivery.body, CALLBACK_SECRET, standard, now=time.time())
    payload = json.loads(delivery.body)
    assert payload["task_id"] == task_id
    assert payload["project_id"] == "myapp"
    assert payload["status"] == "completed"
    assert payload["result"]["artifacts"]["commit_sha"] == head
    assert payload["result"]["output"] == "done"

    task = await forgeline.wait_status(task_id, {"completed"})
    assert task["attempts"] == 1
    assert task["result"]["artifacts"]["commit_sha"] == head
    assert task["started_at"]
    assert task["finished_at"]
    deadline = asyncio.get_running_loop().time() + 10
    while task["callbacks"][0]["status"] != "delivered":
        assert asyncio.get_running_loop().time() < deadline, task["callbacks"]
        await asyncio.sleep(0.1)
        task = await forgeline.task(task_id)
    assert task["callbacks"][0]["attempts"][0]["status_code"] == 200

    replay = await forgeline.events(task_id, last_event_id=len(events) - 2)
    assert [e["seq"] for e in replay] == [len(events) - 1, len(events)]
    as_json = await forgeline.client.get(f"/tasks/{task_id}/events", params={"format": "json"})
    assert [e["seq"] for e in as_json.json()] == [e["seq"] for e in events]


async def test_build_without_changes_completes_without_commit(
    forgeline: Running, model: AnthropicServer
) -> None:
    """An agent that changes no file: completed, nothing committed or pushed."""
    model.script = always([text("Nothing to change.")])
    await forgeline.create_project("quiet")
    repo = bare(forgeline, "quiet")
    before = git("rev-parse", "main", cwd=repo)
    task_id = await forgeline.build("quiet", prompt="Look around")
    events = await forgeline.events(task_id)
    assert events[-1]["data"]["status"] == "succeeded"
    task = await forgeline.wait_status(task_id, {"completed"})
    assert "commit_sha" not in task["result"]["artifacts"]
    assert git("rev-parse", "main", cwd=repo) == before
    assert any(
        e["type"] == "status"
        and e["data"].get("step") == "commit"
        and e["data"].get("outcome") == "skipped"
        for e in events
    )


async def test_failing_agent_fails_the_build_and_says_so(
    forgeline: Running, model: AnthropicServer, receiver: CallbackReceiver
) -> None:
    """The model answers 500: the task fails (no retry), the callback says failed."""
    model.script = always(ApiError(500))
    await forgeline.create_project("broken")
    task_id = await forgeline.build("broken", prompt="anything", callback_url=receiver.url())
    events = await forgeline.events(task_id)
    assert events[-1]["data"]["status"] == "failed"
    task = await forgeline.wait_status(task_id, {"failed"})
    assert task["attempts"] == 1
    assert "500" in task["result"]["output"] or "500" in (task["last_error"] or "")
    [delivery] = await receiver.wait_for(1, timeout_s=20)
    assert json.loads(delivery.body)["status"] == "failed"


async def test_review_branch_without_auto_deploy(forgeline: Running) -> None:
    """auto_deploy false: the commit goes to forgeline/<task id>, main stays put."""
    await forgeline.create_project("review")
    repo = bare(forgeline, "review")
    main_before = git("rev-parse", "main", cwd=repo)
    task_id = await forgeline.build("review", prompt="create hello.txt", auto_deploy=False)
    await forgeline.events(task_id)
    task = await forgeline.wait_status(task_id, {"completed"})
    branch = task["result"]["artifacts"]["branch"]
    assert branch == f"forgeline/{task_id}"
    assert git("rev-parse", branch, cwd=repo) == task["result"]["artifacts"]["commit_sha"]
    assert git("rev-parse", "main", cwd=repo) == main_before


async def test_rejected_push_fails_with_the_reason(forgeline: Running) -> None:
    """A remote hook that declines the push: the build fails and names the reason."""
    await forgeline.create_project("guarded")
    hook = bare(forgeline, "guarded") / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'pushes are frozen today' >&2\nexit 1\n")
    hook.chmod(0o755)
    task_id = await forgeline.build("guarded", prompt="create hello.txt")
    events = await forgeline.events(task_id)
    assert events[-1]["data"]["status"] == "failed"
    task = await forgeline.wait_status(task_id, {"failed"})
    assert "pushes are frozen today" in task["result"]["output"]


def _sleeping(req: ApiRequest) -> Reply:
    if req.tool_results:
        return [text("done")]
    return [bash("sleep 30; echo finished > slept.txt")]


async def test_cancel_running_build(
    forgeline: Running, model: AnthropicServer, receiver: CallbackReceiver
) -> None:
    """Cancel while the agent's Bash tool sleeps: cancelled within 5 s, no process left,
    checkout removed, callback sent."""
    model.script = _sleeping
    await forgeline.create_project("sleepy")
    task_id = await forgeline.build("sleepy", prompt="take a nap", callback_url=receiver.url())
    await forgeline.wait_for_event(task_id, "tool_use")
    deadline = asyncio.get_running_loop().time() + 30
    while not await _sleep_running():  # the Bash tool's sleep has started
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    started = asyncio.get_running_loop().time()
    response = await forgeline.client.post(f"/tasks/{task_id}/cancel")
    assert response.status_code == 200
    task = await forgeline.wait_status(task_id, {"cancelled"}, timeout_s=10)
    assert asyncio.get_running_loop().time() - started < 5
    events = await forgeline.events(task_id)
    assert events[-1]["data"]["status"] == "cancelled"
    assert not await _sleep_running()
    # The attempt's own checkout is gone with it: nothing of the agent's work lingers.
    assert list((forgeline.settings.data_dir / "checkouts" / "sleepy").iterdir()) == []
    [delivery] = await receiver.wait_for(1, timeout_s=20)
    assert json.loads(delivery.body)["status"] == "cancelled"
    assert task["status"] == "cancelled"


async def test_cancel_queued_build(forgeline: Running, receiver: CallbackReceiver) -> None:
    """A build waiting behind another of the same project is cancelled at once, with its
    result event and callback."""
    await forgeline.create_project("line")
    first = await forgeline.build("line", prompt="create hello.txt")
    second = await forgeline.build("line", prompt="create hello.txt", callback_url=receiver.url())
    response = await forgeline.client.post(f"/tasks/{second}/cancel")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] in {"cancelled", "running"}
    if body["status"] == "cancelled":
        events = await forgeline.events(second)
        assert events[-1]["type"] == "result"
        assert events[-1]["data"]["status"] == "cancelled"
        [delivery] = await receiver.wait_for(1, timeout_s=20)
        assert json.loads(delivery.body)["status"] == "cancelled"
    await forgeline.wait_status(second, {"cancelled"}, timeout_s=30)
    await forgeline.wait_status(first, {"completed"}, timeout_s=60)
    again = await forgeline.client.post(f"/tasks/{second}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "task_state"


async def test_callback_receiver_down_then_up(
    forgeline: Running, receiver: CallbackReceiver
) -> None:
    """The receiver is down when the build ends: the callback is retried until it is up,
    and every attempt shows in GET /tasks/{id}."""
    await forgeline.create_project("patient")
    receiver.down()
    task_id = await forgeline.build(
        "patient", prompt="create hello.txt", callback_url=receiver.url()
    )
    await forgeline.events(task_id)
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        task = await forgeline.task(task_id)
        if task["callbacks"] and len(task["callbacks"][0]["attempts"]) >= 2:
            break
        assert asyncio.get_running_loop().time() < deadline, task["callbacks"]
        await asyncio.sleep(0.1)
    receiver.up()
    [delivery] = await receiver.wait_for(1, timeout_s=30)
    assert delivery.signature_valid
    while task["callbacks"][0]["status"] != "delivered":
        assert asyncio.get_running_loop().time() < deadline + 30
        await asyncio.sleep(0.1)
        task = await forgeline.task(task_id)
    attempts = task["callbacks"][0]["attempts"]
    assert attempts[-1]["status_code"] == 200
    assert all(a["status_code"] is None for a in attempts[:-1])


async def test_idempotency_key_returns_the_same_task(forgeline: Running) -> None:
    """The same Idempotency-Key gives the same task; another key a new one."""
    await forgeline.create_project("idem")
    headers = {"Idempotency-Key": "abc-123"}
    body = {"prompt": "create hello.txt"}
    first = await forgeline.client.post("/project/idem/build", json=body, headers=headers)
    second = await forgeline.client.post("/project/idem/build", json=body, headers=headers)
    assert first.status_code == 202
    assert second.status_code == 200
    assert first.json()["task_id"] == second.json()["task_id"]
    other = await forgeline.client.post(
        "/project/idem/build", json=body, headers={"Idempotency-Key": "other"}
    )
    assert other.json()["task_id"] != first.json()["task_id"]
    for task_id in {first.json()["task_id"], other.json()["task_id"]}:
        await forgeline.events(task_id)


async def test_shutdown_gives_running_builds_back(
    tmp_path: Path, claude_bin: Path, model: AnthropicServer
) -> None:
    """Stopping the server while a build outlives the grace period cancels it and puts the
    task back in the queue without counting the attempt (another worker will run it)."""
    from forgeline.adapters.queue import build_queue
    from forgeline.adapters.sql.database import open_database

    model.script = _sleeping
    settings = server_settings(tmp_path / "data", claude_bin, shutdown_grace_s=0.5)
    async with running_forgeline(settings) as forgeline:
        await forgeline.create_project("late")
        task_id = await forgeline.build("late", prompt="take a nap")
        await forgeline.wait_for_event(task_id, "tool_use")
    db = open_database(settings.database_url)
    await db.open()
    try:
        task = await build_queue(db).get(task_id)
    finally:
        await db.aclose()
    assert task.status.value == "queued"
    assert task.attempts == 0
    assert not await _sleep_running()


async def test_lost_heartbeat_stops_the_run_and_the_task_runs_again(
    tmp_path: Path, claude_bin: Path, model: AnthropicServer
) -> None:
    """When heartbeats fail for a whole lease (database unreachable for this worker), the
    run stops its agent at once instead of running beside another worker; the expired
    task is then run again to completion, with one commit."""
    from forgeline.domain.errors import StorageError

    calls = {"n": 0}

    def sleep_once(req: ApiRequest) -> Reply:
        calls["n"] += 1
        if calls["n"] == 1:
            return [bash("sleep 30; echo finished > slept.txt")]
        return hello_script(req)

    model.script = sleep_once
    settings = server_settings(tmp_path / "data", claude_bin, lease_seconds=1.5)
    async with running_forgeline(settings) as forgeline:
        await forgeline.create_project("flaky")
        task_id = await forgeline.build("flaky", prompt="create hello.txt")
        await forgeline.wait_for_event(task_id, "tool_use")
        deadline = asyncio.get_running_loop().time() + 30
        while not await _sleep_running():
            assert asyncio.get_running_loop().time() < deadline, "the Bash tool never started"
            await asyncio.sleep(0.1)
        queue = forgeline.container.queue
        real_heartbeat = queue.heartbeat

        async def unreachable(lease: Lease, *, lease_s: float) -> WorkTask:
            raise StorageError("database unreachable: connection refused")

        queue.heartbeat = unreachable  # type: ignore[method-assign]
        try:
            stopped = asyncio.get_running_loop().time() + 10
            while await _sleep_running():
                assert asyncio.get_running_loop().time() < stopped, "the agent kept running"
                await asyncio.sleep(0.2)
        finally:
            queue.heartbeat = real_heartbeat  # type: ignore[method-assign]
        task = await forgeline.wait_status(task_id, {"completed"}, timeout_s=60)
        assert task["attempts"] == 2
        events = await forgeline.events(task_id)
        assert [e["type"] for e in events].count("result") == 1
        log = git(
            "log",
            "--format=%(trailers:key=Forgeline-Task,valueonly)",
            "main",
            cwd=bare(forgeline, "flaky"),
        )
        assert log.splitlines().count(task_id) == 1


async def _sleep_running() -> bool:
    """Whether a Bash tool's ``sleep 30`` of these tests runs right now."""
    ps = await asyncio.to_thread(
        subprocess.run,
        ["pgrep", "-f", "sleep 30; echo finished"],
        capture_output=True,
        text=True,
        check=False,
    )
    return bool(ps.stdout.strip())
