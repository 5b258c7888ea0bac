"""The API as its users' tools meet it: schemathesis over every operation of a live server
with all its checks, and a client generated from the live ``/openapi.json`` by
openapi-python-client running a real build through typed models."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.support.anthropic_server import AnthropicServer
from tests.support.forgeline_server import Running, running_forgeline, server_settings

#: Test cases per operation and phase: what the issue that asked for the check used, and
#: about half a minute for the whole run here.
EXAMPLES = 20
#: A fixed seed: the same cases on every run (schemathesis prints it with any failure).
SEED = 13
BIN = Path(sys.executable).parent


@pytest.fixture
async def idle(tmp_path: Path, claude_bin: Path) -> AsyncIterator[Running]:
    """forgeline without workers: builds stay queued, nothing runs an agent. A remote that
    does not answer fails fast."""
    settings = server_settings(tmp_path / "data", claude_bin, workers=0, git_network_timeout_s=5.0)
    async with running_forgeline(settings) as running:
        await running.create_project("app")
        yield running


async def test_schemathesis_finds_no_failure(idle: Running, tmp_path: Path) -> None:
    """Every operation, every check (status codes, content types, headers, schemas of
    answers and of each SSE message, schema-valid data accepted and invalid data refused,
    Allow on 405, auth not ignored, stateful sequences along inferred links): no failure."""
    done = await asyncio.to_thread(
        subprocess.run,
        [
            str(BIN / "schemathesis"),
            "--config-file",
            str(ROOT / "tests" / "support" / "schemathesis.toml"),
            "run",
            f"{idle.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            str(SEED),
            "--no-color",
        ],
        cwd=tmp_path,  # its cache lands there
        env={"PATH": f"{BIN}:/usr/bin:/bin", "FORGELINE_TEST_TOKEN": idle.token},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr
    assert "23/23" in done.stdout  # every operation was selected …
    assert "Tested: 23" in done.stdout  # … and tested


@pytest.fixture
async def forgeline(
    tmp_path: Path, claude_bin: Path, model: AnthropicServer
) -> AsyncIterator[Running]:
    """forgeline running builds with the real claude CLI against the scripted model."""
    async with running_forgeline(server_settings(tmp_path / "data", claude_bin)) as running:
        yield running


def generated_client(url: str, into: Path) -> ModuleType:
    """The package openapi-python-client generates from ``url``'s live document; any
    warning (a schema it could not turn into a model) fails the test."""
    done = subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--url",
            f"{url}/openapi.json",
            "--meta",
            "none",
            "--output-path",
            str(into / "forgeline_generated"),
        ],
        env={"PATH": f"{BIN}:/usr/bin:/bin"},  # it formats its output with ruff
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    assert "Warning" not in said, said
    sys.path.insert(0, str(into))
    try:
        return importlib.import_module("forgeline_generated")
    finally:
        sys.path.remove(str(into))


def drive(generated: str, url: str, token: str) -> dict[str, Any]:
    """Create a project, build it, follow the task, list tasks and read the diff, through
    the generated client only (blocking: run it in a thread)."""
    package = importlib.import_module(generated)
    with package.AuthenticatedClient(base_url=url, token=token) as client:
        return _drive(generated, client)


def _drive(generated: str, client: Any) -> dict[str, Any]:
    api = importlib.import_module(f"{generated}.api")
    models = importlib.import_module(f"{generated}.models")
    projects = importlib.import_module(f"{api.__name__}.projects.create_project")
    create_build = importlib.import_module(f"{api.__name__}.builds.create_build")
    get_task = importlib.import_module(f"{api.__name__}.tasks.get_task")
    list_tasks = importlib.import_module(f"{api.__name__}.tasks.list_tasks")
    get_task_diff = importlib.import_module(f"{api.__name__}.tasks.get_task_diff")

    project = projects.sync(client=client, body=models.ProjectIn(name="generated"))
    assert isinstance(project, models.ProjectOut), project
    accepted = create_build.sync(
        "generated", client=client, body=models.BuildIn(prompt="create hello.txt")
    )
    assert isinstance(accepted, models.Accepted), accepted
    final = {models.TaskStatus.COMPLETED, models.TaskStatus.FAILED, models.TaskStatus.CANCELLED}
    deadline = time.monotonic() + 60
    while True:
        task = get_task.sync(accepted.task_id, client=client)
        assert isinstance(task, models.TaskOut), task
        if task.status in final:
            break
        assert time.monotonic() < deadline, task
        time.sleep(0.2)
    page = list_tasks.sync(client=client, project="generated")
    assert isinstance(page, models.TaskPage), page
    diff = get_task_diff.sync(accepted.task_id, client=client)
    return {
        "state": project.state,
        "status": task.status,
        "commit": task.result.artifacts.commit_sha,
        "created_at": task.created_at,
        "listed": [t.task_id for t in page.items],
        "task_id": accepted.task_id,
        "diff": diff,
        "models": models,
    }


async def test_a_generated_client_runs_a_build_with_typed_models(
    forgeline: Running, tmp_path: Path
) -> None:
    """openapi-python-client turns every schema into a model with typed attributes, and its
    client creates a project, builds it, gets and lists the task and reads its diff."""
    module = await asyncio.to_thread(generated_client, forgeline.url, tmp_path)
    try:
        seen = await asyncio.to_thread(drive, module.__name__, forgeline.url, forgeline.token)
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == module.__name__]:
            del sys.modules[name]
    models = seen["models"]
    assert seen["state"] == models.ProjectOutState.READY
    assert seen["status"] == models.TaskStatus.COMPLETED
    assert seen["created_at"].tzinfo is not None  # a datetime, read from "…Z"
    assert seen["listed"] == [seen["task_id"]]
    assert isinstance(seen["commit"], str)
    assert len(seen["commit"]) == 40
    assert "+hello from the fake API" in seen["diff"]
