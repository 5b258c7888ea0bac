"""Scale-out on PostgreSQL: `forgeline serve --workers 0` plus two `forgeline worker`
processes; one worker is killed with SIGKILL in the middle of a build."""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.anthropic_server import AnthropicServer, first_attempt_sleeps
from tests.support.callback_receiver import CallbackReceiver
from tests.support.forgeline_server import CALLBACK_SECRET, git
from tests.support.serve_process import admin_client, fleet, live_processes, wait_until_gone

pytestmark = [pytest.mark.postgres, pytest.mark.claude, pytest.mark.slow]

#: The first attempt's Bash tool sleeps this long (unique on the machine, for ps).
SLEEP = f"{60 + secrets.randbelow(30)}.{secrets.randbelow(10**6):06d}"


@pytest.fixture
def env(tmp_path: Path, pg_url: str, claude_bin: Path) -> Iterator[dict[str, str]]:
    """The environment shared by the three processes (each gets its own data dir)."""
    with AnthropicServer(first_attempt_sleeps(SLEEP)) as model:
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
    """SIGKILL the worker running a build while its agent's Bash tool runs: within a second
    no process of that run is left (ps); after its lease expires the other worker runs the
    build to the end: one commit with the task's trailer, holding only what the completing
    attempt wrote, and one callback delivered."""
    receiver = CallbackReceiver(CALLBACK_SECRET).start()
    try:
        with fleet(tmp_path, env) as f:
            base = f.serve("api", "--workers", "0")
            with admin_client(base, tmp_path / "api") as http:
                assert http.post("/projects", json={"name": "shared"}).status_code == 201
                for name in ("w1", "w2"):
                    f.start(name, ["worker", "--concurrency", "1", "--name", name])
                body = {"prompt": "build it", "callback_url": receiver.url()}
                task_id = http.post("/project/shared/build", json=body).json()["task_id"]

                # Wait until a worker runs the agent's Bash tool, then kill that worker outright.
                deadline = time.monotonic() + 60
                while not live_processes(f"sleep {SLEEP}"):
                    assert time.monotonic() < deadline, "the Bash tool never started"
                    time.sleep(0.05)
                first = http.get(f"/tasks/{task_id}").json()["worker"]
                assert first in f.procs
                f.procs[first].send_signal(signal.SIGKILL)
                f.procs[first].wait(timeout=10)
                assert wait_until_gone(f"sleep {SLEEP}", within_s=1.0) == []
                assert wait_until_gone(str(tmp_path / first), within_s=1.0) == []

                deadline = time.monotonic() + 90
                while (task := http.get(f"/tasks/{task_id}").json())["status"] != "completed":
                    assert task["status"] in {"queued", "running"}, task
                    assert time.monotonic() < deadline, task
                    time.sleep(0.2)
                survivor = "w2" if first == "w1" else "w1"
                assert task["worker"] == survivor
                assert task["attempts"] == 2

                repo = tmp_path / "git" / "shared.git"
                log = git(
                    "log", "--format=%H %(trailers:key=Forgeline-Task,valueonly)", "main", cwd=repo
                )
                commits = [line for line in log.splitlines() if task_id in line]
                assert len(commits) == 1
                assert git("show", "main:log.txt", cwd=repo) == "second"

                deliveries = receiver.wait_for_sync(1, timeout_s=30)
                time.sleep(1.0)  # a duplicate, if any, would arrive now
                assert len(receiver.received) == 1
                payload = json.loads(deliveries[0].body)
                assert payload["status"] == "completed"
                assert payload["result"]["artifacts"]["commit_sha"] == commits[0].split()[0]
                deadline = time.monotonic() + 20
                while (cb := http.get(f"/tasks/{task_id}").json()["callbacks"])[0][
                    "status"
                ] != "delivered":
                    assert time.monotonic() < deadline, cb
                    time.sleep(0.2)
                assert len(cb) == 1
    finally:
        receiver.stop()
