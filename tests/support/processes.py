"""forgeline as real child processes (``serve``, ``worker``) for fault drills, and ``ps``
checks of what is left running."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port


def start_forgeline(
    args: list[str], env: dict[str, str], data_dir: Path, log: Path
) -> subprocess.Popen[bytes]:
    """``python -m forgeline <args>`` with ``env`` and its own data directory, output to
    ``log``."""
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "forgeline", *args],
            env={**env, "FORGELINE_DATA_DIR": str(data_dir)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait (bounded) until ``/readyz`` answers 200; fail with the log if the process died."""
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "serve did not start"
        time.sleep(0.1)


def live_processes(text: str) -> list[str]:
    """``ps`` lines (pid, state, command line) of live processes whose command line holds
    ``text``; zombies, whose parent has yet to reap them, are dead already."""
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


@dataclass
class Fleet:
    """forgeline processes of one test, stopped (SIGTERM, then SIGKILL) at the end."""

    tmp: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, args: list[str], data_dir: Path | None = None) -> None:
        """Start ``python -m forgeline <args>`` under ``name`` (its log: ``<name>.log``)."""
        self.procs[name] = start_forgeline(
            args, self.env, data_dir or self.tmp / name, self.log(name)
        )

    def serve(self, name: str, *extra: str, data_dir: Path | None = None) -> str:
        """Start ``forgeline serve`` on a free port; its base URL once it is ready."""
        port = free_port()
        self.start(name, ["serve", "--port", str(port), *extra], data_dir)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, self.procs[name], self.log(name))
        return base

    def log(self, name: str) -> Path:
        """Where ``name`` writes its output."""
        return self.tmp / f"{name}.log"

    def stop(self) -> None:
        """SIGTERM every live process, then SIGKILL what did not stop within 30 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def fleet(tmp: Path, env: dict[str, str]) -> Iterator[Fleet]:
    """A :class:`Fleet`, stopped when the block ends."""
    running = Fleet(tmp, env)
    try:
        yield running
    finally:
        running.stop()


def client(base: str, data_dir: Path, **kw: Any) -> httpx.Client:
    """An admin client of the server whose data directory is ``data_dir``."""
    token = (data_dir / "admin.token").read_text().strip()
    return httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kw
    )
