"""Scale-out on PostgreSQL: `forgeline serve --workers 0` plus two `forgeline worker`
processes; one worker is killed with SIGKILL in the middle of a build."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.support.anthropic_server import AnthropicServer, ApiRequest, Reply, bash, text
from tests.support.callback_receiver import CallbackReceiver
from tests.support.forgeline_server import CALLBACK_SECRET, git
from tests.support.serve_process import start, stop, wait_ready

pytestmark = [pytest.mark.postgres, pytest.mark.claude, pytest.mark.slow]


def _slow_build(req: ApiRequest) -> Reply:
    if req.tool_results:
        return [text("done")]
    return [bash("sleep 4; echo built > built.txt")]


def _kill_processes_under(root: Path) -> None:
    """End every process whose working directory lies under ``root`` (what a SIGKILLed
    worker's agent left running; a real deployment loses them with the machine)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = (entry / "cwd").readlink()
        except OSError:
            continue
        if cwd.is_relative_to(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


@pytest.fixture
def env(tmp_path: Path, pg_url: str, claude_bin: Path) -> Iterator[dict[str, str]]:
    """The environment shared by the three processes (each gets its own data dir)."""
    with AnthropicServer(_slow_build) as model:
        yield {
            **{k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")},
            "FORGELINE_DATABASE_URL": pg_url,
            "FORGELINE_CLAUDE_BIN": str(claude_bin),
            "FORGELINE_CLAUDE_MAX_RETRIES": "0",
            "FORGELINE_LEASE_SECONDS": "3",
            "FORGELINE_CALLBACK_SECRET": CALLBACK_SECRET,
            "FORGELINE_CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
            "FORGELINE_CALLBACK_BACKOFF_BASE_S": "0.2",
            "FORGELINE_LOG_LEVEL": "warning",
            "FORGELINE_GIT_BASE_URL": str(tmp_path / "git"),
            "ANTHROPIC_BASE_URL": model.url,
            "ANTHROPIC_API_KEY": "sk-test",
        }


def test_killed_worker_build_is_finished_once_by_another(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """SIGKILL the worker running a build: after its lease expires the other worker runs it
    to the end: one commit with the task's trailer, one callback delivered."""
    port = free_port()
    api_dir = tmp_path / "api"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    receiver = CallbackReceiver(CALLBACK_SECRET).start()
    stack = contextlib.ExitStack()
    try:
        procs["api"] = start(
            ["serve", "--workers", "0", "--port", str(port)], env, api_dir, tmp_path / "api.log"
        )
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, procs["api"], tmp_path / "api.log")
        token = (api_dir / "admin.token").read_text().strip()
        client = stack.enter_context(
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        )
        assert client.post("/projects", json={"name": "shared"}).status_code == 201
        for name in ("w1", "w2"):
            procs[name] = start(
                ["worker", "--concurrency", "1", "--name", name],
                env,
                tmp_path / name,
                tmp_path / f"{name}.log",
            )
        task_id = client.post(
            "/project/shared/build", json={"prompt": "build it", "callback_url": receiver.url()}
        ).json()["task_id"]

        # Wait until a worker runs the agent's Bash tool, then kill that worker outright.
        deadline = time.monotonic() + 60
        while True:
            events = client.get(f"/tasks/{task_id}/events", params={"format": "json"}).json()
            if any(e["type"] == "tool_use" for e in events):
                break
            assert time.monotonic() < deadline, events
            time.sleep(0.1)
        first = client.get(f"/tasks/{task_id}").json()["worker"]
        assert first in procs
        procs[first].send_signal(signal.SIGKILL)
        procs[first].wait(timeout=10)
        _kill_processes_under(tmp_path / first)

        deadline = time.monotonic() + 90
        while (task := client.get(f"/tasks/{task_id}").json())["status"] != "completed":
            assert task["status"] in {"queued", "running"}, task
            assert time.monotonic() < deadline, task
            time.sleep(0.2)
        survivor = "w2" if first == "w1" else "w1"
        assert task["worker"] == survivor
        assert task["attempts"] == 2

        repo = tmp_path / "git" / "shared.git"
        log = git("log", "--format=%H %(trailers:key=Forgeline-Task,valueonly)", "main", cwd=repo)
        commits = [line for line in log.splitlines() if task_id in line]
        assert len(commits) == 1
        assert git("show", "main:built.txt", cwd=repo) == "built"

        deliveries = receiver.wait_for_sync(1, timeout_s=30)
        time.sleep(1.0)  # a duplicate, if any, would arrive now
        assert len(receiver.received) == 1
        payload = json.loads(deliveries[0].body)
        assert payload["status"] == "completed"
        assert payload["result"]["artifacts"]["commit_sha"] == commits[0].split()[0]
        deadline = time.monotonic() + 20
        while (cb := client.get(f"/tasks/{task_id}").json()["callbacks"])[0][
            "status"
        ] != "delivered":
            assert time.monotonic() < deadline, cb
            time.sleep(0.2)
        assert len(cb) == 1
    finally:
        stop(list(procs.values()))
        _kill_processes_under(tmp_path)
        receiver.stop()
        stack.close()
