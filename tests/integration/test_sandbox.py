"""The build sandbox, tried as a hostile agent and a fault drill would.

Real ``forgeline serve`` processes on embedded SQLite, the real ``claude`` (and
``opencode``) CLI against scripted model servers, real bubblewrap sandboxes: a scripted
Bash tool tries to reach what it must not, and SIGKILL drills are checked with ``ps`` and
with the content of the commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from forgeline.bootstrap import open_migrated_database
from forgeline.domain.errors import LeaseLostError
from forgeline.settings import Settings
from tests.support.anthropic_server import (
    AnthropicServer,
    ApiRequest,
    Reply,
    bash,
    first_attempt_sleeps,
    hello_script,
    text,
)
from tests.support.callback_receiver import CallbackReceiver
from tests.support.forgeline_server import (
    CALLBACK_SECRET,
    git,
    running_forgeline,
    server_settings,
)
from tests.support.openai_server import RecordedRequest, ScriptedOpenAI, scripted_openai
from tests.support.openai_server import Reply as OpenAIReply
from tests.support.serve_process import (
    Fleet,
    admin_client,
    fleet,
    live_processes,
    wait_until_gone,
)

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


def kill_and_restart(f: Fleet, data: Path, sleep_arg: str) -> str:
    """SIGKILL serve ``first`` (its agent's tool runs ``sleep <sleep_arg>``): within a second
    no process of the run is left, neither the tool's command nor anything of the data
    directory (the sandbox's command lines name it). Then serve ``second`` on the same data
    directory; its base URL."""
    f.procs["first"].send_signal(signal.SIGKILL)
    f.procs["first"].wait(timeout=10)
    assert wait_until_gone(f"sleep {sleep_arg}", within_s=1.0) == []
    assert wait_until_gone(str(data), within_s=1.0) == []
    return f.serve("second", data_dir=data)


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
        base = kill_and_restart(f, data, sleep_arg)
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
    """An OpenCode build's sandboxed ``opencode serve`` and its bash tool die with a
    SIGKILLed ``serve`` within a second; a restarted serve finishes the build, and the
    commit holds only what the completing attempt wrote."""
    sleep_arg = f"{60 + secrets.randbelow(30)}.{secrets.randbelow(10**6):06d}"
    bash_runs: list[None] = []

    def script(request: RecordedRequest) -> OpenAIReply:
        if request.is_title_request:
            return OpenAIReply(text="title")
        if request.last_role == "tool":
            return OpenAIReply(text="done")
        bash_runs.append(None)
        command = (
            f"echo first >> log.txt; sleep {sleep_arg}; echo late >> log.txt"
            if len(bash_runs) == 1
            else "echo second >> log.txt"
        )
        return OpenAIReply(tool="bash", arguments={"command": command, "description": "work"})

    scripted_openai.reset()
    scripted_openai.script = script
    data = tmp_path / "data"
    config = tmp_path / "opencode.json"
    config.write_text(json.dumps(scripted_openai.opencode_config()))
    opencode = {
        "FORGELINE_OPENCODE_BIN": str(opencode_bin),
        "FORGELINE_OPENCODE_CONFIG": str(config),
        "FORGELINE_LEASE_SECONDS": "2",
    }
    try:
        with fleet(tmp_path, {**env, **opencode}) as f:
            base = f.serve("first", data_dir=data)
            with admin_client(base, data) as http:
                assert http.post("/projects", json={"name": "oc"}).status_code == 201
                body = {"prompt": "work", "provider": "opencode", "model": "fake/fake-model"}
                task_id = http.post("/project/oc/build", json=body).json()["task_id"]
                deadline = time.monotonic() + 60
                while not live_processes(f"sleep {sleep_arg}"):
                    task = http.get(f"/tasks/{task_id}").json()
                    assert task["status"] in {"queued", "running"}, task
                    assert time.monotonic() < deadline, "the bash tool never started"
                    time.sleep(0.1)
            assert live_processes(f"{data}/agents/opencode/")
            base = kill_and_restart(f, data, sleep_arg)
            with admin_client(base, data) as http:
                task = wait_task(http, task_id, {"completed", "failed"})
                assert task["status"] == "completed", task
                assert task["attempts"] == 2
        assert git("show", "main:log.txt", cwd=data / "git" / "oc.git") == "second"
        assert wait_until_gone(str(data), within_s=5.0) == []
    finally:
        scripted_openai.reset()


async def test_platform_secrets_are_masked_from_start_up(tmp_path: Path, claude_bin: Path) -> None:
    """After a restart, before any build has used them, every stored credential, the admin
    token, the master key and the callback key are masked wherever an agent's words go:
    events, the task's result, the callback."""
    settings = server_settings(tmp_path / "data", claude_bin, callback_allowed_hosts=["127.0.0.1"])
    stored = f"stored-{secrets.token_hex(10)}"
    async with running_forgeline(settings) as forgeline:
        await forgeline.create_project("app")
        put = await forgeline.client.put("/credentials/deploy-key", json={"value": stored})
        assert put.status_code == 200, put.text
    admin = (settings.data_dir / "admin.token").read_text().strip()
    master = (settings.data_dir / "master.key").read_text().strip()
    leaked = [stored, admin, master, CALLBACK_SECRET]
    with AnthropicServer(lambda req: [text("I found: " + " ".join(leaked))]) as model:
        recv = CallbackReceiver(CALLBACK_SECRET).start()
        try:
            agent_env = {"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-test"}
            with _environ(agent_env):
                async with running_forgeline(settings) as forgeline:
                    task_id = await forgeline.build("app", prompt="leak", callback_url=recv.url())
                    task = await forgeline.wait_status(task_id, {"completed", "failed"})
                    events = await forgeline.events(task_id)
            [delivery] = await recv.wait_for(1, timeout_s=20)
        finally:
            recv.stop()
    said = [e for e in events if e["type"] == "message"]
    assert said, events
    text_seen = json.dumps(said) + json.dumps(task) + delivery.body.decode()
    for value in leaked:
        assert value not in text_seen
    for name in ("deploy-key", "admin-token", "master-key", "callback-secret"):
        assert f"[REDACTED:{name}]" in json.dumps(said)


def test_no_silent_fallback_without_bubblewrap(tmp_path: Path, env: dict[str, str]) -> None:
    """Where the sandbox cannot start, serve, worker and agent run refuse to run agents and
    say how to fix it; FORGELINE_SANDBOX=none is the explicit way round."""
    broken = {**env, "FORGELINE_BWRAP_BIN": str(tmp_path / "no-bwrap")}
    for args in (
        ["serve", "--port", "0"],
        ["worker"],
        ["agent", "run", "--prompt", "x", "--workdir", "."],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "forgeline", *args],
            env={**broken, "FORGELINE_DATA_DIR": str(tmp_path / "data")},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode != 0, args
        assert "bubblewrap" in done.stderr, done.stderr
        assert "FORGELINE_SANDBOX=none" in done.stderr, done.stderr


async def test_unsandboxed_builds_say_so(
    tmp_path: Path, claude_bin: Path, model: AnthropicServer
) -> None:
    """With FORGELINE_SANDBOX=none every build's events carry a warning."""
    settings = server_settings(tmp_path / "data", claude_bin, sandbox="none")
    async with running_forgeline(settings) as forgeline:
        await forgeline.create_project("open")
        task_id = await forgeline.build("open", prompt="create hello.txt")
        await forgeline.wait_status(task_id, {"completed"})
        events = await forgeline.events(task_id)
    warnings = [e for e in events if e["type"] == "status" and e["data"]["state"] == "warning"]
    assert len(warnings) == 1
    assert "FORGELINE_SANDBOX=none" in warnings[0]["data"]["message"]


async def test_stale_attempts_and_the_old_shared_checkout_are_swept(
    tmp_path: Path, claude_bin: Path, model: AnthropicServer
) -> None:
    """On start, a worker removes attempt directories no running attempt holds and the one
    shared checkout an older version kept per project; a build runs beside them."""
    data = tmp_path / "data"
    stale = data / "checkouts" / "app" / f"{uuid.uuid4()}.3"
    (stale / "src").mkdir(parents=True)
    (stale / "src" / "half.txt").write_text("half-done\n")
    old = data / "checkouts" / "legacy"
    (old / ".git").mkdir(parents=True)
    (old / "README.md").write_text("old\n")
    settings = server_settings(data, claude_bin)
    async with running_forgeline(settings) as forgeline:
        await forgeline.create_project("app")
        task_id = await forgeline.build("app", prompt="create hello.txt")
        await forgeline.wait_status(task_id, {"completed"})
        deadline = time.monotonic() + 10
        while stale.exists() or old.exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    assert list((data / "checkouts" / "app").iterdir()) == []


async def test_an_attempt_that_lost_its_lease_never_pushes(
    tmp_path: Path, claude_bin: Path, model: AnthropicServer
) -> None:
    """The lease is lost just as the agent finishes: the attempt proves its lease before
    committing, finds it gone and publishes nothing; the next attempt pushes the one commit."""
    settings = server_settings(tmp_path / "data", claude_bin, lease_seconds=1.5)
    async with running_forgeline(settings) as forgeline:
        await forgeline.create_project("fenced")
        queue = forgeline.container.queue
        real_heartbeat = queue.heartbeat
        lose_next = asyncio.Event()

        async def heartbeat(lease: Any, *, lease_s: float) -> Any:
            if lose_next.is_set():
                lose_next.clear()
                raise LeaseLostError(lease.task_id, lease.token)
            return await real_heartbeat(lease, lease_s=lease_s)

        queue.heartbeat = heartbeat  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()

        def script(req: ApiRequest) -> Reply:
            reply = hello_script(req)
            if req.tool_results and not getattr(script, "lost", False):
                script.lost = True  # type: ignore[attr-defined]
                loop.call_soon_threadsafe(lose_next.set)
            return reply

        model.script = script
        task_id = await forgeline.build("fenced", prompt="create hello.txt")
        task = await forgeline.wait_status(task_id, {"completed"}, timeout_s=60)
        events = await forgeline.events(task_id)
    assert task["attempts"] == 2
    pushes = [e for e in events if e["type"] == "status" and e["data"].get("step") == "push"]
    assert [e["data"]["phase"] for e in pushes] == ["started", "finished"]
    repo = Path(settings.git_base_url) / "fenced.git"
    trailers = git("log", "--format=%(trailers:key=Forgeline-Task,valueonly)", "main", cwd=repo)
    assert trailers.split().count(task_id) == 1


async def test_data_dir_and_database_are_owner_only(tmp_path: Path) -> None:
    """Whatever the umask and the modes an older version left, the data directory is made
    0700 and the SQLite files 0600."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "forgeline.db").touch(mode=0o644)
    old_umask = os.umask(0)
    try:
        async with open_migrated_database(Settings(data_dir=data)):
            pass
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.glob("forgeline.db*")}
    assert "forgeline.db" in modes
    assert set(modes.values()) == {0o600}, modes


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (forgeline's own environment reaches the
    agent's allow-listed variables)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
