"""The README's "Using it" steps as a newcomer meets them: a fresh copy of the checkout (what
a clone holds, nothing installed), ``./scripts/serve`` in one shell, then the section's
commands, in order and as written, in another fresh shell.

Only two things are not as written: the port (another test may hold 8080: the test moves
``127.0.0.1:8080`` and ``FORGELINE_PORT`` together) and the model (the real ``claude``
talks to the suite's scripted model, through serve's ``ANTHROPIC_BASE_URL``, as an
operator's gateway would be set).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port
from tests.support.anthropic_server import AnthropicServer, ApiRequest, Reply, text, write
from tests.support.serve_process import live_processes, stop

pytestmark = [pytest.mark.claude, pytest.mark.slow]

#: The first start installs the virtualenv and the agent CLIs into the fresh copy.
FIRST_START_S = 600


def readme_steps(port: int) -> str:
    """The shell blocks of the README's "Using it" section, in order, on ``port``."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert blocks, "no shell block in the README's Using it section"
    return "\n".join(blocks).replace("127.0.0.1:8080", f"127.0.0.1:{port}")


def fresh_copy(into: Path) -> None:
    """The checkout's files as a clone has them (tracked, and new files not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


#: What a user's shell keeps of this machine: who and where, and how it reaches package
#: registries (proxies, CA bundles, package-tool settings).
_MACHINE = re.compile(
    r"HOME|USER|LANG|TERM|PYENV_ROOT|.*(PROXY|CERT|SSL|CA_BUNDLE).*|(PIP|UV|NPM)_.*",
    re.IGNORECASE,
)


def user_environment() -> dict[str, str]:
    """A new shell's environment: the machine's settings and the tools a checkout needs
    (python3, uv, node, npm, git) on PATH; nothing of forgeline, no virtualenv, no agent."""
    tools = {
        str(Path(found).parent)
        for name in ("python3", "uv", "npm", "node", "git")
        if (found := shutil.which(name))
    }
    env = {
        name: value
        for name, value in os.environ.items()
        if _MACHINE.fullmatch(name) and not name.startswith("FORGELINE_")
    }
    env["PATH"] = ":".join([*sorted(tools - {"/usr/bin", "/bin"}), "/usr/bin", "/bin"])
    return env


def page_writer(req: ApiRequest) -> Reply:
    """Every build writes a page saying what it was asked (so each one commits)."""
    if not req.has_tools:
        return [text("Probe session")]
    if req.tool_results:
        return [text("done")]
    name = f"page-{len(req.messages)}-{abs(hash(req.prompt)) % 10_000}.txt"
    return [text("Writing it."), write(f"{req.cwd}/{name}", req.prompt + "\n")]


def test_the_using_it_steps_work_as_written(tmp_path: Path, model: AnthropicServer) -> None:
    """serve starts in a fresh copy; in a new shell, `source scripts/activate` puts forgeline
    and the pinned CLIs on PATH and every command of the section then succeeds: credential,
    project from a template, a build followed live, a follow-up build continuing the agent's
    session with its events, diff and log, a limited token, and curl with it."""
    model.script = page_writer
    checkout = tmp_path / "forgeline"
    fresh_copy(checkout)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    user = user_environment()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            ["./scripts/serve"],
            cwd=checkout,
            env={
                **user,
                "FORGELINE_PORT": str(port),
                "ANTHROPIC_BASE_URL": model.url,
                "FORGELINE_CLAUDE_MAX_RETRIES": "0",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + FIRST_START_S
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            assert serve.poll() is None, log.read_text()[-5000:]
            assert time.monotonic() < deadline, log.read_text()[-5000:]
            time.sleep(0.5)

        (checkout / "key.txt").write_text("sk-test-key-1234\n")
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", readme_steps(port)],
            cwd=checkout,
            env={**user, "FORGELINE_PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        said = f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-6000:]}"
        assert done.returncode == 0, said
        assert '"status":"queued"' in done.stdout, said  # curl's build was accepted
        assert "+Make the title larger" in done.stdout, said  # task diff of the follow-up
        assert "continuing" in done.stdout, said  # task log: it resumed the session
        assert f"data dir: {checkout / '.forgeline'}" in done.stderr, said
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
        stop([serve])
    assert serve.returncode == 0, log.read_text()[-5000:]
    assert live_processes(str(checkout)) == []
