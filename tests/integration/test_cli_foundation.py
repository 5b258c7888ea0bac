"""The CLI as a user runs it: a real process, real binaries, a real HTTP port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port


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
    """agents --json: claude-code first and default; available follows the installed binaries."""
    env = {"FORGELINE_CLAUDE_BIN": str(claude_bin), "FORGELINE_OPENCODE_BIN": str(opencode_bin)}
    out = run_cli("agents", "--json", env=env)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == ["claude-code", "opencode"]
    assert [r["default"] for r in rows] == [True, False]
    assert all(r["available"] for r in rows)
    assert rows[0]["capabilities"]["version"] == "2.1.197"
    assert rows[1]["capabilities"]["version"] == "1.18.33"

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
