"""``forgeline credential …`` as a user runs it: real processes, a real database file."""

from __future__ import annotations

import json
import os
import pty
import secrets
import select
import subprocess
import sys
import time
from pathlib import Path

from forgeline.adapters.credentials.keys import read_key_file


def cli(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``forgeline`` with only FORGELINE_DATA_DIR set, ``stdin`` piped in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")}
    env["FORGELINE_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "forgeline", "credential", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_set_list_delete_rotate(tmp_path: Path) -> None:
    """set (stdin), list --json, rotate-key, delete: values never in any output nor the db file."""
    data = tmp_path / "data"
    data.mkdir()
    global_value = f"glob-{secrets.token_urlsafe(20)}"
    project_value = f"proj-{secrets.token_urlsafe(20)}"
    outputs: list[str] = []

    def run(*args: str, stdin: str = "", code: int = 0) -> subprocess.CompletedProcess[str]:
        done = cli(data, *args, stdin=stdin)
        outputs.append(done.stdout + done.stderr)
        assert done.returncode == code, done.stderr
        return done

    assert (
        "stored credential 'api-key' (global scope)"
        in run("set", "api-key", stdin=global_value + "\n").stdout
    )
    stored = json.loads(
        run("set", "api-key", "--project", "myapp", "--json", stdin=project_value).stdout
    )
    assert (stored["name"], stored["scope"], stored["project"]) == ("api-key", "project", "myapp")

    listed = json.loads(run("list", "--json").stdout)
    assert [(c["name"], c["scope"]) for c in listed] == [
        ("api-key", "global"),
        ("api-key", "project"),
    ]
    assert all("value" not in c for c in listed)
    assert [
        c["project"] for c in json.loads(run("list", "--project", "myapp", "--json").stdout)
    ] == ["myapp"]
    assert "api-key" in run("list").stdout

    [old_key] = read_key_file(data / "master.key")
    report = json.loads(run("rotate-key", "--json").stdout)
    assert report["re_encrypted"] == 2
    assert report["retired_key_ids"] == [old_key.id]
    assert [k.id for k in read_key_file(data / "master.key")] == [report["key_id"]]

    assert (
        "deleted credential 'api-key' (project 'myapp')"
        in run("delete", "api-key", "--project", "myapp").stdout
    )
    missing = run("delete", "api-key", "--project", "myapp", code=1)
    assert "no credential named 'api-key' in project 'myapp'" in missing.stderr
    assert [c["scope"] for c in json.loads(run("list", "--json").stdout)] == ["global"]

    everything = "".join(outputs)
    db_bytes = b"".join(p.read_bytes() for p in data.glob("forgeline.db*"))
    for plain in (global_value, project_value):
        assert plain not in everything
        assert plain.encode() not in db_bytes


def test_value_is_never_an_argument(tmp_path: Path) -> None:
    """A value given as an argument is refused without being echoed; empty stdin is refused."""
    value = f"oops-{secrets.token_urlsafe(16)}"
    for args in ([value], [f"--value={value}"], ["--project", "myapp", value]):
        done = cli(tmp_path, "set", "api-key", *args)
        assert done.returncode == 2
        assert "never taken as an argument" in done.stderr
        assert value not in done.stdout + done.stderr
    empty = cli(tmp_path, "set", "api-key", stdin="")
    assert empty.returncode == 1
    assert "no value given" in empty.stderr
    assert json.loads(cli(tmp_path, "list", "--json").stdout) == []


def test_wrong_master_key_is_a_clear_error(tmp_path: Path) -> None:
    """With another FORGELINE_MASTER_KEY, set fails naming the key ids, without a traceback."""
    assert cli(tmp_path, "set", "api-key", stdin="first-value-123").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")}
    env |= {
        "FORGELINE_DATA_DIR": str(tmp_path),
        "FORGELINE_MASTER_KEY": "A" * 43,  # base64 of 32 zero bytes: valid, but not ours
    }
    done = subprocess.run(
        [sys.executable, "-m", "forgeline", "credential", "set", "other"],
        input="second-value-456",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith("error: cannot store credentials")
    assert "Traceback" not in done.stderr


def test_commands_name_the_data_dir_and_refuse_a_missing_one(tmp_path: Path) -> None:
    """Run from the wrong place, a command that works on the database says which data dir
    it means and refuses one that does not exist, instead of making an empty one there."""
    missing = tmp_path / "nowhere"
    for args in (("credential", "list"), ("token", "create", "bot"), ("db", "migrate")):
        env = {k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")}
        done = subprocess.run(
            [sys.executable, "-m", "forgeline", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "FORGELINE_DATA_DIR": str(missing)},
            check=False,
        )
        assert done.returncode == 1, done.stderr
        refusal = (
            f"error: the data dir {missing} does not exist: run this where `forgeline serve`"
            " runs, or point FORGELINE_DATA_DIR at its data dir"
        )
        assert done.stderr.splitlines() == [f"data dir: {missing}", refusal]
        assert done.stdout == ""
        assert not missing.exists()


def _read_until(fd: int, marker: bytes, seen: bytearray, deadline: float) -> None:
    """Read the terminal's output into ``seen`` until ``marker`` shows up (or EOF)."""
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} on the terminal; got {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return
        if not chunk:
            return
        seen += chunk


def test_hidden_prompt_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal, set prompts twice without echoing the value, then stores it."""
    value = f"typed-{secrets.token_urlsafe(16)}"
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")}
    env["FORGELINE_DATA_DIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "forgeline", "credential", "set", "typed-key"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    seen = bytearray()
    try:
        deadline = time.monotonic() + 30
        # Wait for getpass's own prompt (the space after the colon): only then is echo off,
        # and input typed earlier would be flushed (TCSAFLUSH) anyway.
        _read_until(master, b"Value for typed-key: ", seen, deadline)
        os.write(master, value.encode() + b"\n")
        _read_until(master, b"Repeat for confirmation: ", seen, deadline)
        os.write(master, value.encode() + b"\n")
        _read_until(master, b"stored credential", seen, deadline)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
    assert value.encode() not in seen
    listed = json.loads(cli(tmp_path, "list", "--json").stdout)
    assert [c["name"] for c in listed] == ["typed-key"]
