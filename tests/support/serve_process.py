"""Real ``forgeline`` processes (``serve``, ``worker``) for tests that need several of them.

Each child writes to its own log file and is stopped when the block ends: SIGTERM, then
SIGKILL if it does not go within the grace period. No child outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from tests.conftest import ROOT


def forgeline_env(**settings: str) -> dict[str, str]:
    """This process's environment without any ``FORGELINE_*`` variable, plus ``settings``
    (``FORGELINE_`` prefix implied: ``database_url=…`` is ``FORGELINE_DATABASE_URL``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")}
    env.update({f"FORGELINE_{key.upper()}": value for key, value in settings.items()})
    env.setdefault("FORGELINE_LOG_LEVEL", "warning")
    return env


def start(
    args: list[str], env: Mapping[str, str], data_dir: Path, log: Path
) -> subprocess.Popen[bytes]:
    """``python -m forgeline ARGS`` with its own data dir, output to ``log``."""
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "forgeline", *args],
            cwd=ROOT,
            env={**env, "FORGELINE_DATA_DIR": str(data_dir)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Return once ``base/readyz`` answers 200; fail with the log if the process ends."""
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"serve did not start: {log.read_text()}"
        time.sleep(0.1)


def stop(procs: list[subprocess.Popen[bytes]], grace_s: float = 30) -> None:
    """SIGTERM every process still running, then wait; SIGKILL what is left after ``grace_s``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serving(env: Mapping[str, str], data_dir: Path, port: int, log: Path) -> Iterator[str]:
    """``forgeline serve --workers 0`` on ``port`` until the block ends; its base URL."""
    proc = start(["serve", "--workers", "0", "--port", str(port)], env, data_dir, log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc, log)
        yield base
    finally:
        stop([proc])
