"""forgeline's real HTTP API (uvicorn on 127.0.0.1) for end-to-end tests, with a client.

The server runs in the test's event loop, with its workers and callback sender, exactly as
``forgeline serve`` wires them; it stops (draining its workers) when the block ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from forgeline.bootstrap import Container
from forgeline.entrypoints.api.app import create_app
from forgeline.services.auth import ADMIN_TOKEN_FILE
from forgeline.settings import Settings
from tests.conftest import free_port

#: The callback signing key of test servers.
CALLBACK_SECRET = "test-callback-secret-0123456789"


def server_settings(data_dir: Path, claude_bin: Path, **overrides: Any) -> Settings:
    """Settings of a test server: its own data dir, the pinned claude, loopback callbacks."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "claude_bin": str(claude_bin),
        "claude_max_retries": 0,
        "callback_allowed_hosts": ["127.0.0.1"],
        "callback_secret": CALLBACK_SECRET,
        "callback_backoff_base_s": 0.2,
        "callback_backoff_cap_s": 1.0,
        "lease_seconds": 5.0,
        "shutdown_grace_s": 5.0,
        "workers": 2,
        "log_level": "warning",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Running:
    """A running server and an authenticated client of it."""

    url: str
    settings: Settings
    client: httpx.AsyncClient
    token: str
    app: FastAPI

    @property
    def container(self) -> Container:
        """The server's composition root (its adapters, for setting up a test)."""
        built: Container = self.app.state.container
        return built

    async def create_project(self, name: str, **body: Any) -> dict[str, Any]:
        """POST /projects, asserting 201."""
        response = await self.client.post("/projects", json={"name": name, **body})
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    async def build(self, project: str, **body: Any) -> str:
        """POST a build, asserting 202; the task id."""
        response = await self.client.post(f"/project/{project}/build", json=body)
        assert response.status_code == 202, response.text
        task_id: str = response.json()["task_id"]
        return task_id

    async def events(
        self, task_id: str, *, last_event_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Read the SSE stream of a task to its end (bounded by the client's timeout)."""
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        events: list[dict[str, Any]] = []
        ids: list[int] = []
        async with self.client.stream(
            "GET", f"/tasks/{task_id}/events", headers=headers
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
                elif line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert ids == [e["seq"] for e in events]
        return events

    async def task(self, task_id: str) -> dict[str, Any]:
        """GET /tasks/{id}."""
        response = await self.client.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def wait_for_event(
        self, task_id: str, event_type: str, timeout_s: float = 30
    ) -> list[dict[str, Any]]:
        """Poll the task's events until one of ``event_type`` is stored; the events so far."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            got = await self.client.get(f"/tasks/{task_id}/events", params={"format": "json"})
            events: list[dict[str, Any]] = got.json()
            if any(e["type"] == event_type for e in events):
                return events
            assert asyncio.get_running_loop().time() < deadline, events
            await asyncio.sleep(0.1)

    async def wait_status(
        self, task_id: str, statuses: set[str], timeout_s: float = 30
    ) -> dict[str, Any]:
        """Poll the task until its status is one of ``statuses``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            task = await self.task(task_id)
            if task["status"] in statuses:
                return task
            assert asyncio.get_running_loop().time() < deadline, task
            await asyncio.sleep(0.1)


@asynccontextmanager
async def running_forgeline(settings: Settings) -> AsyncIterator[Running]:
    """Serve forgeline on a free loopback port until the block ends."""
    port = free_port()
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if serving.done():
                    serving.result()
                await asyncio.sleep(0.02)
        token = (settings.data_dir / ADMIN_TOKEN_FILE).read_text().strip()
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(60.0),
        ) as client:
            yield Running(url=url, settings=settings, client=client, token=token, app=app)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 60)


async def run_cli(
    running: Running, *args: str, token: str | None = None, url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``forgeline ARGS`` in a child process pointed at ``running`` (or at ``url``), with
    its token (or ``token``) and data dir; output captured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")}
    env.update(
        FORGELINE_URL=url or running.url,
        FORGELINE_TOKEN=token or running.token,
        FORGELINE_DATA_DIR=str(running.settings.data_dir),
    )
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "forgeline", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def git(*args: str, cwd: Path | str) -> str:
    """Run git in ``cwd`` and return its stdout (stripped)."""
    out = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30
    )
    return out.stdout.strip()
