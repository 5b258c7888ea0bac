"""``forgeline agent run --provider opencode`` leaves nothing behind, however it ends.

The command starts its own ``opencode serve`` (450 to 620 MB each) for the run. Whether the
run ends by itself, by Ctrl-C or by SIGTERM, the server and everything it started must be
gone when the command has exited: checked with ``ps`` (the server's processes are the ones
whose ``HOME`` lies in the command's data directory).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_opencode import MODEL, make_repo, oc_binary
from tests.support.openai_server import ScriptedOpenAI, scripted_openai

__all__ = ["oc_binary", "scripted_openai"]  # module-scoped fixtures, re-exported for pytest

pytestmark = [pytest.mark.opencode, pytest.mark.slow]


def opencode_processes(data_dir: Path) -> list[str]:
    """``ps`` lines of the live (not zombie) processes whose HOME is under ``data_dir``."""
    out = subprocess.run(
        ["ps", "-e", "e", "-ww", "-o", "pid=,stat=,args="],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        line[:200]
        for line in out.splitlines()
        if f"HOME={data_dir}/" in line and line.split(None, 2)[1][0] != "Z"
    ]


def assert_none_left(data_dir: Path) -> None:
    """No process of ``data_dir``'s opencode is alive (those found are killed, then shown)."""
    left = opencode_processes(data_dir)
    for line in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split()[0]), signal.SIGKILL)
    assert left == []


def start(prompt: str, tmp_path: Path, binary: str, llm: ScriptedOpenAI) -> subprocess.Popen[str]:
    """``forgeline agent run --provider opencode --json`` in a repository of its own."""
    config = tmp_path / "opencode.json"
    config.write_text(json.dumps(llm.opencode_config()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")}
    env.update(
        FORGELINE_DATA_DIR=str(tmp_path / "data"),
        FORGELINE_OPENCODE_BIN=binary,
        FORGELINE_OPENCODE_CONFIG=str(config),
    )
    repo = make_repo(tmp_path / "repo")
    args = ["--provider", "opencode", "--model", MODEL, "--prompt", prompt, "--json"]
    return subprocess.Popen(
        [sys.executable, "-m", "forgeline", "agent", "run", *args, "--workdir", str(repo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen[str], lines: list[str]) -> tuple[int, dict[str, object]]:
    """Wait for the command; its exit code and its last event (the result)."""
    out, err = proc.communicate(timeout=120)
    events = [json.loads(line) for line in [*lines, *out.splitlines()]]
    assert events, err
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "result", err
    return proc.returncode, events[-1]["data"]


def test_normal_exit_leaves_no_opencode(
    oc_binary: str, scripted_openai: ScriptedOpenAI, tmp_path: Path
) -> None:
    """A run that ends by itself: exit 0, and its opencode server is gone."""
    proc = start("TEXTONLY", tmp_path, oc_binary, scripted_openai)
    code, result = finish(proc, [])
    assert_none_left(tmp_path / "data")
    assert (code, result["status"]) == (0, "succeeded")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_leaves_no_opencode(
    oc_binary: str, scripted_openai: ScriptedOpenAI, tmp_path: Path, sig: signal.Signals
) -> None:
    """Ctrl-C or SIGTERM while the model is still answering: the run ends cancelled (exit
    130), and its opencode server, seen running before, is gone."""
    proc = start("HANG", tmp_path, oc_binary, scripted_openai)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if json.loads(line)["type"] == "status":  # the prompt is with the server
                break
        assert opencode_processes(tmp_path / "data"), "the server should be running now"
        proc.send_signal(sig)
        code, result = finish(proc, lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        assert_none_left(tmp_path / "data")
    assert (code, result["status"]) == (130, "cancelled")


def test_sigkill_of_agent_run_leaves_no_opencode(
    oc_binary: str, scripted_openai: ScriptedOpenAI, tmp_path: Path
) -> None:
    """SIGKILL of the command itself (no chance to clean up): its sandboxed opencode server
    dies with it, within a second."""
    proc = start("HANG", tmp_path, oc_binary, scripted_openai)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if json.loads(line)["type"] == "status":
                break
        assert opencode_processes(tmp_path / "data"), "the server should be running now"
        proc.kill()
        proc.communicate()
        deadline = time.monotonic() + 1.0
        while opencode_processes(tmp_path / "data") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        assert_none_left(tmp_path / "data")
