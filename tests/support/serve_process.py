"""Real ``forgeline`` processes (``serve``, ``worker``) for tests that need several of them
or kill them (fault drills), and ``ps`` checks of what is left running.

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
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import ROOT, free_port


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


@dataclass
class Fleet:
    """Named forgeline processes of one test (see :func:`fleet`)."""

    tmp: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def log(self, name: str) -> Path:
        """Where ``name`` writes its output."""
        return self.tmp / f"{name}.log"

    def start(self, name: str, args: list[str], data_dir: Path | None = None) -> None:
        """Start ``python -m forgeline ARGS`` as ``name`` (data dir: ``<tmp>/<name>``)."""
        self.procs[name] = start(args, self.env, data_dir or self.tmp / name, self.log(name))

    def serve(self, name: str, *extra: str, data_dir: Path | None = None) -> str:
        """``forgeline serve`` on a free port as ``name``; its base URL once ready."""
        port = free_port()
        self.start(name, ["serve", "--port", str(port), *extra], data_dir)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, self.procs[name], self.log(name))
        return base


@contextlib.contextmanager
def fleet(tmp: Path, env: dict[str, str]) -> Iterator[Fleet]:
    """A :class:`Fleet` whose processes are all stopped when the block ends."""
    running = Fleet(tmp, env)
    try:
        yield running
    finally:
        stop(list(running.procs.values()))


def admin_client(base: str, data_dir: Path) -> httpx.Client:
    """A client of the server at ``base`` with the admin token from ``data_dir``."""
    token = (data_dir / "admin.token").read_text().strip()
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def live_processes(text: str) -> list[str]:
    """``ps`` lines (pid, state, full command line) of live processes whose command line
    holds ``text``; a zombie, which its parent has yet to reap, is dead already."""
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    lines = []
    for line in out.splitlines():
        fields = line.split(None, 2)
        if len(fields) == 3 and text in fields[2] and fields[1][0] != "Z":
            lines.append(line)
    return lines


def wait_until_gone(text: str, within_s: float) -> list[str]:
    """Poll ``ps`` until no live process names ``text``, at most ``within_s``; what is left."""
    deadline = time.monotonic() + within_s
    while (left := live_processes(text)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left
