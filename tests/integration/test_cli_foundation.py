"""The CLI as a user runs it: a real process, real binaries, a real HTTP port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import TOOLS_BIN, free_port

#: The native JSON-lines CLIs after claude-code and opencode, in registration order.
NATIVE = ("codex", "gemini", "qwen")


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``forgeline`` in a child process, as from a shell."""
    return subprocess.run(
        [sys.executable, "-m", "forgeline", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )


def test_version_and_help() -> None:
    """--version prints the version; --help lists the commands."""
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("forgeline ")
    helped = run_cli("--help")
    assert helped.returncode == 0
    for command in ("serve", "agents"):
        assert command in helped.stdout


def test_agents_json_tells_the_truth(claude_bin: Path, opencode_bin: Path, tmp_path: Path) -> None:
    """agents --json: claude-code first and default, then opencode and the native codex,
    gemini and qwen; available follows the installed binaries, capabilities say how each
    reports cost."""
    env = {
        "FORGELINE_CLAUDE_BIN": str(claude_bin),
        "FORGELINE_OPENCODE_BIN": str(opencode_bin),
        **{f"FORGELINE_{cli.upper()}_BIN": str(TOOLS_BIN / cli) for cli in NATIVE},
    }
    out = run_cli("agents", "--json", env=env)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == ["claude-code", "opencode", *NATIVE]
    assert [r["default"] for r in rows] == [True, False, False, False, False]
    versions = {r["name"]: r["capabilities"]["version"] for r in rows}
    # gemini --version loads its whole bundle (3-5 s here under load): past the availability
    # bound it is reported unavailable with the reason, as the port requires.
    for row in rows:
        if row["name"] != "gemini" or row["available"]:
            assert row["available"], row
        else:
            assert "did not finish" in row["capabilities"]["detail"]
    assert versions["claude-code"] == "2.1.197"
    assert versions["opencode"] == "1.18.33"
    assert versions["codex"] == "0.171.0"
    assert versions["qwen"] == "0.15.10"
    assert versions["gemini"] in ("0.61.0", None)
    costs = {r["name"]: r["capabilities"]["cost"] for r in rows}
    assert costs == {
        "claude-code": "reported",
        "opencode": "reported",
        "codex": "estimated",
        "gemini": "estimated",
        "qwen": "estimated",
    }

    missing = {
        "FORGELINE_CLAUDE_BIN": str(tmp_path / "nope"),
        "FORGELINE_OPENCODE_BIN": str(opencode_bin),
    }
    rows = json.loads(run_cli("agents", "--json", env=missing).stdout)
    assert rows[0]["available"] is False
    assert "not found" in rows[0]["capabilities"]["detail"]
    assert rows[1]["available"] is True


def test_serve_answers_health_and_readiness(tmp_path: Path) -> None:
    """serve on embedded defaults: /healthz and /readyz answer 200; SIGTERM stops it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "forgeline", "serve", "--port", str(port)],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "serve did not answer within 30 s"
                time.sleep(0.1)
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        assert (tmp_path / ".forgeline").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        if proc.stdout:
            proc.stdout.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_clean_shutdown_exits_0(tmp_path: Path, command: str, sig: signal.Signals) -> None:
    """serve and worker, stopped by SIGTERM or SIGINT once running, shut down and exit 0:
    supervisors (systemd, Kubernetes) read death by a signal (-15) as a failure."""
    log = tmp_path / "log"
    args = ["serve", "--port", str(free_port())] if command == "serve" else ["worker"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "forgeline", *args],
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while b"worker.started" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"{command} did not start within 30 s"
            time.sleep(0.1)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"worker.stopped" in log.read_bytes()


_TIME = "2026-11-24T07:08:52.328Z"
#: A finished task as forgeline shows it.
_TASK = {
    "task_id": "t1",
    "kind": "build",
    "status": "completed",
    "attempts": 1,
    "max_attempts": 3,
    "cancel_requested": False,
    "worker": "w",
    "created_at": _TIME,
    "started_at": _TIME,
    "finished_at": _TIME,
    "updated_at": _TIME,
    "last_error": None,
    "result": None,
}


class _Garbage(BaseHTTPRequestHandler):
    """Not quite forgeline: an event stream with garbage between two real events, and a
    project list that is an HTML page."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        """Quiet."""

    def do_GET(self) -> None:
        """Answer the three routes the CLI asks for."""
        envelope = {"task_id": "t1", "provider": "x", "session_id": None, "time": _TIME}
        event = {**envelope, "seq": 1, "type": "message", "data": {"text": "hi"}}
        result = {**envelope, "seq": 2, "type": "result", "data": {"status": "succeeded"}}
        routes = {
            "/tasks/t1/events": (
                "text/event-stream",
                (
                    f"id: 1\ndata: {json.dumps(event)}\n\n: keep-alive\n\n"
                    "data: {not json\n\ndata: [1, 2]\n\ndata: \x1b]0;pwned\x07\n\n"
                    f"data: {'[' * 100_000}\n\n"
                    f"id: 2\ndata: {json.dumps(result)}\n\n"
                ),
            ),
            "/tasks/t1": ("application/json", json.dumps(_TASK)),
            "/projects": ("text/html", "<html>a proxy's login page</html>"),
        }
        content_type, body = routes[self.path.split("?")[0]]
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def garbage_server() -> Iterator[str]:
    """A :class:`_Garbage` server on 127.0.0.1; its URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_garbage_from_the_server_is_a_clear_message(garbage_server: str) -> None:
    """Messages of an event stream that are not events are skipped with a warning (the
    follow goes on to the result, exit 0); a body that is not JSON is a one-line error,
    exit 1. Never a traceback."""
    env = {"FORGELINE_URL": garbage_server, "FORGELINE_TOKEN": "flt_x"}
    followed = run_cli("task", "events", "t1", "--json", env=env)
    assert followed.returncode == 0, followed.stderr
    assert [json.loads(line)["seq"] for line in followed.stdout.splitlines()] == [1, 2]
    warnings = followed.stderr.splitlines()
    assert warnings == [
        "warning: skipped a message that is not an event: {not json",
        "warning: skipped a message that is not an event: [1, 2]",
        "warning: skipped a message that is not an event: \\x1b]0;pwned\\x07",
        f"warning: skipped a message that is not an event: {'[' * 200}",
    ]

    listed = run_cli("project", "list", env=env)
    assert listed.returncode == 1
    assert listed.stderr == (
        f"error: {garbage_server} answered GET /projects with something that is not JSON\n"
    )
