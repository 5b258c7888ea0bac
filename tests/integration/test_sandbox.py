"""The build sandbox, tried as a hostile agent and a fault drill would.

Real ``forgeline serve`` processes on embedded SQLite, the real ``claude`` (and
``opencode``) CLI against scripted model servers, real bubblewrap sandboxes: a scripted
Bash tool tries to reach what it must not, and SIGKILL drills are checked with ``ps`` and
with the content of the commits.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.anthropic_server import (
    AnthropicServer,
    ApiRequest,
    Reply,
    bash,
    first_attempt_sleeps,
    text,
)
from tests.support.callback_receiver import CallbackReceiver
from tests.support.forgeline_server import CALLBACK_SECRET, git
from tests.support.openai_server import ScriptedOpenAI, scripted_openai
from tests.support.serve_process import admin_client, fleet, live_processes, wait_until_gone

__all__ = ["scripted_openai"]  # the module-scoped fixture, re-exported for pytest

pytestmark = [pytest.mark.claude, pytest.mark.slow]

#: A value in forgeline's own environment that no agent may read (an operator's token).
HOST_SECRET = f"host-secret-{secrets.token_hex(12)}"


@pytest.fixture
def env(claude_bin: Path) -> dict[str, str]:
    """forgeline's environment: the pinned claude, loopback callbacks, a host secret."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")},
        "FORGELINE_CLAUDE_BIN": str(claude_bin),
        "FORGELINE_CLAUDE_MAX_RETRIES": "0",
        "FORGELINE_CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
        "FORGELINE_LOG_LEVEL": "warning",
        "ANTHROPIC_API_KEY": "sk-test",
        "OPERATOR_TOKEN": HOST_SECRET,
    }


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    """A webhook receiver (the signatures are not what these tests check)."""
    recv = CallbackReceiver(CALLBACK_SECRET).start()
    try:
        yield recv
    finally:
        recv.stop()


def wait_task(http: httpx.Client, task_id: str, statuses: set[str], limit_s: float = 90) -> Any:
    """Poll ``GET /tasks/{id}`` until its status is one of ``statuses`` (bounded)."""
    deadline = time.monotonic() + limit_s
    while (task := http.get(f"/tasks/{task_id}").json())["status"] not in statuses:
        assert time.monotonic() < deadline, task
        time.sleep(0.2)
    return task


def wait_event(http: httpx.Client, task_id: str, kind: str, limit_s: float = 60) -> None:
    """Poll the task's stored events until one of type ``kind`` is there (bounded)."""
    deadline = time.monotonic() + limit_s
    while True:
        events = http.get(f"/tasks/{task_id}/events", params={"format": "json"}).json()
        if any(e["type"] == kind for e in events):
            return
        assert time.monotonic() < deadline, events
        time.sleep(0.1)


def hostile_script(data: Path, forgeline_pid: int, source: Path) -> str:
    """A Bash script that tries, one by one, what an agent must never manage; each line of
    its report says ``REACHED`` or ``BLOCKED``. The first probe is a control that must work."""
    probes = {
        "control-write-own-checkout": "echo mine > own.txt",
        "read-master-key": f"cat {data}/master.key",
        "read-admin-token": f"cat {data}/admin.token",
        "read-callback-key": f"cat {data}/callback.key",
        "read-database": f"cat {data}/forgeline.db",
        "list-other-state": f"ls {data}/agents/claude/other/config",
        "write-other-state": f"touch {data}/agents/claude/other/pwned",
        "list-bare-repositories": f"ls {data}/git/other.git",
        "write-bare-hook": f"echo 'touch /tmp/pwned' > {data}/git/other.git/hooks/post-receive",
        "write-own-git-hook": "echo 'touch /tmp/pwned' > .git/hooks/post-commit",
        "read-forgeline-environ": "grep -a -l OPERATOR_TOKEN /proc/[0-9]*/environ",
        "see-forgeline": f"test -e /proc/{forgeline_pid}/status",
        "signal-forgeline": f"kill -0 {forgeline_pid}",
        "read-forgeline-source": f"ls {source}/src/forgeline",
        "write-system": "touch /usr/pwned",
        "run-as-root": "test $(id -u) -eq 0",
    }
    verdict = 'then echo "$1 REACHED"; else echo "$1 BLOCKED"; fi'
    lines = [f'probe() {{ if sh -c "$2" >/dev/null 2>&1; {verdict}; }}']
    lines += [f"probe {name} {json.dumps(cmd)} >> report.txt" for name, cmd in probes.items()]
    lines.append("cat report.txt")
    return "\n".join(lines)


def test_hostile_agent_reaches_nothing_but_its_checkout(
    tmp_path: Path, env: dict[str, str], receiver: CallbackReceiver
) -> None:
    """From its checkout, a scripted agent tries to read the keys, the admin token and the
    database, another project's state, forgeline's environment and source, to plant a hook
    in a bare repository, to signal forgeline: every attempt fails inside the sandbox, the
    build still completes, and no secret is in its events, result, callback or commit."""
    data = tmp_path / "data"
    project_secret = f"project-secret-{secrets.token_hex(8)}"
    source = Path(__file__).resolve().parents[2]
    with AnthropicServer() as model, fleet(tmp_path, {**env, "ANTHROPIC_BASE_URL": model.url}) as f:
        base = f.serve("serve", data_dir=data)
        pid = f.procs["serve"].pid
        with admin_client(base, data) as http:
            for name in ("other", "evil"):
                assert http.post("/projects", json={"name": name}).status_code == 201
            put = http.put(
                "/credentials/other-key",
                params={"project": "other"},
                json={"value": project_secret},
            )
            assert put.status_code == 200, put.text
            first = http.post("/project/other/build", json={"prompt": "create hello.txt"})
            wait_task(http, first.json()["task_id"], {"completed"})

            script = hostile_script(data, pid, source)

            def hostile(req: ApiRequest) -> Reply:
                if not req.has_tools:
                    return [text("title")]
                if req.tool_results:
                    return [text("done")]
                return [bash(script)]

            model.script = hostile
            task_id = http.post(
                "/project/evil/build",
                json={"prompt": "look around", "callback_url": receiver.url()},
            ).json()["task_id"]
            task = wait_task(http, task_id, {"completed", "failed"})
            assert task["status"] == "completed", task
            events = http.get(f"/tasks/{task_id}/events", params={"format": "json"}).text
        [delivery] = receiver.wait_for_sync(1, timeout_s=30)

    repo = data / "git" / "evil.git"
    report = git("show", "main:report.txt", cwd=repo)
    outcome = dict(line.rsplit(" ", 1) for line in report.splitlines())
    assert outcome.pop("control-write-own-checkout") == "REACHED"
    assert git("show", "main:own.txt", cwd=repo) == "mine"
    assert outcome == dict.fromkeys(outcome, "BLOCKED"), report
    assert len(outcome) == 15
    committed = git("log", "-p", "--all", cwd=repo)
    platform = [
        (data / name).read_text().strip() for name in ("master.key", "admin.token", "callback.key")
    ]
    for value in (*platform, HOST_SECRET, project_secret):
        for where, content in (
            ("events", events),
            ("task", json.dumps(task)),
            ("callback", delivery.body.decode()),
            ("commit", committed),
        ):
            assert value not in content, where
    assert not (data / "git" / "other.git" / "hooks" / "post-receive").exists()
    assert not (data / "agents" / "claude" / "other" / "pwned").exists()


def test_sigkill_of_serve_ends_its_agent_at_once(tmp_path: Path, env: dict[str, str]) -> None:
    """SIGKILL ``serve`` while its agent's Bash tool runs a long command: within a second no
    process of that run is left (ps); a restarted serve takes the build over after the lease,
    and the commit holds only what the completing attempt wrote."""
    data = tmp_path / "data"
    sleep_arg = f"{60 + secrets.randbelow(30)}.{secrets.randbelow(10**6):06d}"
    with (
        AnthropicServer(first_attempt_sleeps(sleep_arg)) as model,
        fleet(
            tmp_path, {**env, "ANTHROPIC_BASE_URL": model.url, "FORGELINE_LEASE_SECONDS": "2"}
        ) as f,
    ):
        base = f.serve("first", data_dir=data)
        with admin_client(base, data) as http:
            assert http.post("/projects", json={"name": "drill"}).status_code == 201
            task_id = http.post("/project/drill/build", json={"prompt": "go"}).json()["task_id"]
            wait_event(http, task_id, "tool_use")
        deadline = time.monotonic() + 30
        while not live_processes(f"sleep {sleep_arg}"):
            assert time.monotonic() < deadline, "the Bash tool never started"
            time.sleep(0.05)
        attempt_dirs = list((data / "checkouts" / "drill").iterdir())
        assert len(attempt_dirs) == 1
        f.procs["first"].send_signal(signal.SIGKILL)
        f.procs["first"].wait(timeout=10)
        assert wait_until_gone(f"sleep {sleep_arg}", within_s=1.0) == []
        assert wait_until_gone(str(data), within_s=1.0) == []

        base = f.serve("second", data_dir=data)
        with admin_client(base, data) as http:
            task = wait_task(http, task_id, {"completed", "failed"})
            assert task["status"] == "completed", task
            assert task["attempts"] == 2
            # The completing attempt removed its directory; the killed one's is swept by
            # the next worker that sees it (every lease/2 s).
            checkouts = data / "checkouts" / "drill"
            deadline = time.monotonic() + 10
            while left := list(checkouts.iterdir()):
                assert time.monotonic() < deadline, left
                time.sleep(0.1)
    assert not attempt_dirs[0].exists()
    repo = data / "git" / "drill.git"
    assert git("show", "main:log.txt", cwd=repo) == "second"


def test_sigkill_of_serve_ends_its_opencode_server(
    tmp_path: Path, env: dict[str, str], scripted_openai: ScriptedOpenAI, opencode_bin: Path
) -> None:
    """An OpenCode build's sandboxed ``opencode serve`` and its Bash tool die with a
    SIGKILLed ``serve`` within a second."""
    scripted_openai.reset()
    data = tmp_path / "data"
    config = tmp_path / "opencode.json"
    config.write_text(json.dumps(scripted_openai.opencode_config()))
    sleep_arg = f"{60 + secrets.randbelow(30)}.{secrets.randbelow(10**6):06d}"
    with fleet(
        tmp_path,
        {
            **env,
            "FORGELINE_OPENCODE_BIN": str(opencode_bin),
            "FORGELINE_OPENCODE_CONFIG": str(config),
        },
    ) as f:
        base = f.serve("serve", data_dir=data)
        with admin_client(base, data) as http:
            assert http.post("/projects", json={"name": "oc"}).status_code == 201
            task_id = http.post(
                "/project/oc/build",
                json={
                    "prompt": f"BASHSLEEP={sleep_arg}:marker.txt",
                    "provider": "opencode",
                    "model": "fake/fake-model",
                },
            ).json()["task_id"]
            deadline = time.monotonic() + 60
            while not live_processes(f"sleep {sleep_arg}"):
                task = http.get(f"/tasks/{task_id}").json()
                assert task["status"] in {"queued", "running"}, task
                assert time.monotonic() < deadline, "the bash tool never started"
                time.sleep(0.1)
        assert live_processes(f"{data}/agents/opencode/")
        f.procs["serve"].send_signal(signal.SIGKILL)
        f.procs["serve"].wait(timeout=10)
        assert wait_until_gone(f"sleep {sleep_arg}", within_s=1.0) == []
        assert wait_until_gone(str(data), within_s=1.0) == []
