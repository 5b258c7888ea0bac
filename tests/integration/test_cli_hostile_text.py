"""Untrusted text through every display path of the CLI: shown as written, never read as
rich markup, never acted on by the terminal.

What an agent says, what its commands print, an API error, a template's description, an
agent program's ``--version`` answer: each arrives here carrying rich markup (``[/x]``,
``[bold]``, ``[link=…]``), ANSI escape sequences and other control characters. Each command
must exit as it would for plain text, show the markup literally, and let no raw control
character (but newline and tab) reach the terminal.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.anthropic_server import (
    AnthropicServer,
    ApiError,
    ApiRequest,
    Reply,
    always,
    bash,
    text,
)
from tests.support.forgeline_server import Running

pytestmark = pytest.mark.claude

#: Markup rich would act on (``[/x]`` closes a tag never opened: a MarkupError).
MARKUP = ("[/x]", "[bold]b[/bold]", "[link=https://evil.example]click[/link]")
#: Erase the screen, set the window title, colour, bell, CR, DEL, a C1 CSI, a bidi
#: override, NUL.
CONTROLS = "\x1b[2J \x1b]0;pwned\x07 \x1b[31mred\x1b[0m cr\r del\x7f c1\x9b bidi\u202e nul\x00"
HOSTILE = " ".join(MARKUP) + " " + CONTROLS + " end"
#: The same for a shell's printf (its output then holds the raw characters).
PRINTF = " ".join(MARKUP) + r" \033[2J \033]0;pwned\007 cr\r del\177 end"
#: What a terminal would act on; the CLI may print only newline and tab of the C0 range.
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def assert_shown_literally(output: str, *pieces: str) -> None:
    """``pieces`` appear as written; no raw control character reached the output."""
    for piece in pieces:
        assert piece in output, output
    assert not RAW_CONTROL.findall(output), f"raw control characters in {output!r}"


def env_for_cli(**extra: str) -> dict[str, str]:
    """The test's environment without forgeline settings, colours or terminal size hints,
    with a wide console (so rich never wraps a hostile piece) and ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FORGELINE_") and k not in {"FORCE_COLOR", "TTY_COMPATIBLE"}
    }
    env.update(COLUMNS="400", NO_COLOR="1", **extra)
    return env


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``forgeline ARGS`` in a child process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "forgeline", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def hostile_agent(req: ApiRequest) -> Reply:
    """Talk hostile text, then run a command that prints it raw; end with it again."""
    if req.tool_results:
        return [text(HOSTILE)]
    return [text(HOSTILE), bash(f"printf '{PRINTF}'")]


async def test_build_task_and_project_views(forgeline: Running, model: AnthropicServer) -> None:
    """build --wait's live view and summary, task events --no-follow, task show, a failed
    build's error and project show print hostile text as plain text."""
    env = env_for_cli(
        FORGELINE_URL=forgeline.url,
        FORGELINE_TOKEN=forgeline.token,
        FORGELINE_DATA_DIR=str(forgeline.settings.data_dir),
    )

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(run_cli, *args, env=env)

    model.script = hostile_agent
    created = await cli("project", "create", "site", "--var", f"note={' '.join(MARKUP)}")
    assert created.returncode == 0, created.stderr
    shown = await cli("project", "show", "site")
    assert shown.returncode == 0, shown.stderr
    assert_shown_literally(shown.stdout, *MARKUP)
    listed = await cli("project", "list")
    assert listed.returncode == 0, listed.stderr

    built = await cli("build", "site", "--prompt", "say it", "--wait")
    assert built.returncode == 0, built.stderr
    # The live view (stderr): the agent's last words and its command, escapes visible.
    assert_shown_literally(built.stderr, *MARKUP, r"\x1b]0;pwned\x07", "printf '[/x]")
    task_id = built.stdout.split()[0]
    assert_shown_literally(built.stdout, f"{task_id} completed")

    listed = await cli("task", "events", task_id, "--no-follow")
    assert listed.returncode == 0, listed.stderr
    assert_shown_literally(listed.stdout, "[/x]", "tool_result")
    shown = await cli("task", "show", task_id)
    assert shown.returncode == 0, shown.stderr
    assert_shown_literally(shown.stdout, f"{task_id} completed")

    model.script = always(ApiError(400, message=HOSTILE))
    failed = await cli("build", "site", "--prompt", "fail", "--wait")
    assert failed.returncode == 1
    assert_shown_literally(failed.stderr + failed.stdout, "[/x]", "failed")
    failed_id = failed.stdout.split()[0]
    task = await forgeline.task(failed_id)
    assert "[/x]" in json.dumps(task)  # the hostile error did reach the CLI
    shown = await cli("task", "show", failed_id)
    assert shown.returncode == 0, shown.stderr
    assert_shown_literally(shown.stdout, "[/x]", "error:")


def test_agent_run_live_view(claude_bin: Path, model: AnthropicServer, tmp_path: Path) -> None:
    """agent run without --json: the agent's words, its command, the command's raw output
    and an API error print as plain text."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    env = env_for_cli(
        FORGELINE_CLAUDE_BIN=str(claude_bin),
        FORGELINE_DATA_DIR=str(tmp_path / "data"),
        FORGELINE_CLAUDE_MAX_RETRIES="0",
    )
    model.script = hostile_agent
    ran = run_cli("agent", "run", "--prompt", "say it", "--workdir", str(repo), env=env)
    assert ran.returncode == 0, ran.stderr
    assert_shown_literally(ran.stdout, *MARKUP, r"\x1b]0;pwned\x07", "succeeded")
    assert_shown_literally(ran.stderr)

    model.script = always(ApiError(400, message=HOSTILE))
    failed = run_cli("agent", "run", "--prompt", "fail", "--workdir", str(repo), env=env)
    assert failed.returncode == 1
    assert_shown_literally(failed.stdout, "[/x]", "failed")


def test_agents_table(tmp_path: Path) -> None:
    """agents: the detail of a program whose --version answers hostile text (and fails)."""
    liar = tmp_path / "claude"
    liar.write_text(f"#!/bin/sh\nprintf '{PRINTF}'\nexit 1\n")
    liar.chmod(0o755)
    out = run_cli("agents", env=env_for_cli(FORGELINE_CLAUDE_BIN=str(liar)))
    assert out.returncode == 0, out.stderr
    assert_shown_literally(out.stdout, *MARKUP, r"\x1b]0;pwned\x07")


def test_templates_table(tmp_path: Path) -> None:
    """templates: a template's description, variable help and default (from
    FORGELINE_TEMPLATE_PATH, i.e. from anyone) print as plain text."""
    folder = tmp_path / "extra" / "evil"
    folder.mkdir(parents=True)
    yaml_text = json.dumps(HOSTILE.replace("\x00", ""))  # YAML takes JSON's escapes
    (folder / "copier.yml").write_text(
        f"_forgeline:\n  description: {yaml_text}\n"
        f"title:\n  type: str\n  help: {yaml_text}\n  default: {yaml_text}\n"
    )
    env = env_for_cli(
        FORGELINE_TEMPLATE_PATH=str(tmp_path / "extra"), FORGELINE_DATA_DIR=str(tmp_path / "d")
    )
    out = run_cli("templates", env=env)
    assert out.returncode == 0, out.stderr
    assert_shown_literally(out.stdout, "evil", *MARKUP, r"\x1b]0;pwned\x07")
