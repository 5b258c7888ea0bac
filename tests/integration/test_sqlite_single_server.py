"""One SQLite data dir serves one forgeline server process: a second `serve` or a `worker`
is refused with a message naming PostgreSQL; commands that talk to the API or use the
database briefly keep working; a server killed with SIGKILL leaves nothing locked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, free_port
from tests.support.serve_process import forgeline_env, start, stop, wait_ready


def _forgeline(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forgeline", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_second_server_on_one_sqlite_data_dir_is_refused(tmp_path: Path) -> None:
    """serve runs; a second serve and a worker on its data dir exit 1 naming PostgreSQL;
    `token create` and API commands work meanwhile; after SIGKILL a new serve starts."""
    data = tmp_path / "data"
    port = free_port()
    env = {
        **forgeline_env(port=str(port), git_base_url=str(tmp_path / "git")),
        "FORGELINE_DATA_DIR": str(data),
    }
    first = start(["serve", "--workers", "0"], env, data, tmp_path / "first.log")
    procs = [first]
    try:
        wait_ready(f"http://127.0.0.1:{port}", first, tmp_path / "first.log")
        for args in (["serve", "--port", str(free_port())], ["worker"]):
            refused = _forgeline(*args, env=env)
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert "PostgreSQL" in refused.stderr
            assert f"pid {first.pid}" in refused.stderr
        assert _forgeline("token", "create", "bot", env=env).returncode == 0
        created = _forgeline("project", "create", "app", env=env)
        assert created.returncode == 0, created.stderr
        listed = _forgeline("project", "list", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        assert "app" in listed.stdout

        first.kill()
        first.wait(timeout=10)
        second = start(["serve", "--workers", "0"], env, data, tmp_path / "second.log")
        procs.append(second)
        wait_ready(f"http://127.0.0.1:{port}", second, tmp_path / "second.log")
    finally:
        stop(procs)
