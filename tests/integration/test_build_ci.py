"""Templates and Woodpecker end to end: create an astro-landing project (rendered, pushed,
activated in CI, deploy secrets set), build it with the real ``claude``, follow its
pipeline, and call back with the pipeline's outcome and the deploy URL."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forgeline.adapters.credentials import load_keyring, open_credential_store
from forgeline.bootstrap import open_migrated_database
from forgeline.domain.secrets import Secret
from forgeline.settings import Settings
from tests.support.anthropic_server import AnthropicServer
from tests.support.callback_receiver import CallbackReceiver
from tests.support.fake_woodpecker import DEFAULT_TOKEN, FakeWoodpecker
from tests.support.forgeline_server import (
    CALLBACK_SECRET,
    Running,
    git,
    running_forgeline,
    server_settings,
)

pytestmark = pytest.mark.claude

DEPLOY_SECRETS = {
    "registry_host": "registry.example",
    "registry_user": "deployer",
    "registry_password": "reg-pass-9f8e7d6c5b4a",
    "kubeconfig": "apiVersion: v1\nkind: Config\n",
}


class ForgeWebhook:
    """What the forge does on a push: tell Woodpecker, which starts a push pipeline.

    The bare repository stands in for the forge's storage; this thread watches its branch
    and delivers the "webhook" to the fake Woodpecker, as Gitea would.
    """

    def __init__(self, repo: Path, fake: FakeWoodpecker) -> None:
        self.repo = repo
        self.fake = fake
        self.repo_id: int | None = None
        self._stop = threading.Event()
        self._seen: str | None = None
        self._thread = threading.Thread(target=self._run, name="forge-webhook", daemon=True)

    def _head(self) -> str | None:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "main"],
            cwd=self.repo,
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip() or None

    def start(self, repo_id: int) -> None:
        """Deliver pushes after the current head to ``repo_id``."""
        self.repo_id = repo_id
        self._seen = self._head()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            head = self._head()
            if head and head != self._seen and self.repo_id is not None:
                self._seen = head
                self.fake.push(self.repo_id, head)

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


async def _store_credentials(settings: Settings, values: dict[str, str]) -> None:
    """Put credentials in before the server starts (as `forgeline credential set` does)."""
    async with open_migrated_database(settings) as db:
        store = open_credential_store(db, load_keyring(None, settings.data_dir))
        for name, value in values.items():
            await store.put(name, Secret(value, name=name))


@pytest.fixture
async def ci_forgeline(
    tmp_path: Path, claude_bin: Path, model: AnthropicServer, fake_woodpecker: FakeWoodpecker
) -> AsyncIterator[Running]:
    """forgeline with Woodpecker configured and its token and deploy secrets stored."""
    settings = server_settings(
        tmp_path / "data",
        claude_bin,
        woodpecker_url=fake_woodpecker.url,
        woodpecker_poll_interval_s=0.1,
        woodpecker_find_timeout_s=10.0,
        woodpecker_pipeline_timeout_s=30.0,
        git_base_url=str(tmp_path / "forge" / "acme"),
    )
    await _store_credentials(settings, {"woodpecker-token": DEFAULT_TOKEN, **DEPLOY_SECRETS})
    async with running_forgeline(settings) as running:
        yield running


async def _create_landing(
    forgeline: Running, fake: FakeWoodpecker
) -> tuple[dict[str, object], ForgeWebhook]:
    fake.add_forge_repo("acme/landing")
    response = await forgeline.client.post(
        "/projects",
        json={
            "name": "landing",
            "template": "astro-landing",
            "variables": {"title": "Soon", "domain": "example.org"},
        },
    )
    assert response.status_code == 201, response.text
    project: dict[str, object] = response.json()
    settings = project["settings"]
    assert isinstance(settings, dict)
    webhook = ForgeWebhook(Path(str(project["repo_url"])), fake)
    webhook.start(int(settings["woodpecker_repo_id"]))
    return project, webhook


async def test_template_project_build_follows_the_pipeline(
    ci_forgeline: Running, fake_woodpecker: FakeWoodpecker, model: AnthropicServer
) -> None:
    """astro-landing project → rendered and pushed, repo activated, secrets set → a build's
    push pipeline is followed to success → callback with commit, pipeline, deploy URL."""
    project, webhook = await _create_landing(ci_forgeline, fake_woodpecker)
    receiver = CallbackReceiver(CALLBACK_SECRET).start()
    try:
        assert project["state"] == "ready"
        settings = project["settings"]
        assert isinstance(settings, dict)
        assert settings["deploy_url"] == "https://landing.example.org"
        repo_id = int(settings["woodpecker_repo_id"])
        secrets = fake_woodpecker.secrets(repo_id)
        assert set(secrets) == set(DEPLOY_SECRETS)
        assert all({"push", "manual"} <= set(s["events"]) for s in secrets.values())
        repo = Path(str(project["repo_url"]))
        files = git("ls-tree", "-r", "--name-only", "main", cwd=repo).split()
        assert ".woodpecker.yaml" in files
        assert ".copier-answers.yml" in files

        fake_woodpecker.autorun(repo_id, "success")
        task_id = await ci_forgeline.build(
            "landing", prompt="create hello.txt", callback_url=receiver.url()
        )
        events = await ci_forgeline.events(task_id)
        assert events[-1]["data"]["status"] == "succeeded"
        assert any(e["type"] == "status" and e["data"].get("state") == "pipeline" for e in events)
        task = await ci_forgeline.wait_status(task_id, {"completed"})
        artifacts = task["result"]["artifacts"]
        assert artifacts["pipeline"] == 1
        assert artifacts["pipeline_status"] == "success"
        assert artifacts["deploy_url"] == "https://landing.example.org"
        [delivery] = await receiver.wait_for(1, timeout_s=20)
        payload = json.loads(delivery.body)
        assert payload["status"] == "completed"
        assert payload["result"]["artifacts"] == artifacts
        # The agent was told what it edits: the template and its variables.
        assert any("astro-landing" in r.prompt for r in model.message_requests)
    finally:
        webhook.stop()
        receiver.stop()


async def test_failing_pipeline_fails_the_build_naming_the_step(
    ci_forgeline: Running, fake_woodpecker: FakeWoodpecker
) -> None:
    """A pipeline that fails at `deploy`: the build fails and says which step."""
    project, webhook = await _create_landing(ci_forgeline, fake_woodpecker)
    receiver = CallbackReceiver(CALLBACK_SECRET).start()
    try:
        settings = project["settings"]
        assert isinstance(settings, dict)
        fake_woodpecker.autorun(
            int(settings["woodpecker_repo_id"]), "failure", failing_step="deploy"
        )
        task_id = await ci_forgeline.build(
            "landing", prompt="create hello.txt", callback_url=receiver.url()
        )
        events = await ci_forgeline.events(task_id)
        assert events[-1]["data"]["status"] == "failed"
        task = await ci_forgeline.wait_status(task_id, {"failed"})
        assert task["result"]["artifacts"]["pipeline_status"] == "failure"
        assert "deploy" in task["result"]["error"]
        [delivery] = await receiver.wait_for(1, timeout_s=20)
        payload = json.loads(delivery.body)
        assert payload["status"] == "failed"
        assert "deploy" in payload["result"]["output"]
    finally:
        webhook.stop()
        receiver.stop()


async def test_woodpecker_down_fails_clearly(
    ci_forgeline: Running, fake_woodpecker: FakeWoodpecker
) -> None:
    """Woodpecker stops answering after the push: retried by the client, then the build
    fails with a message naming the CI call."""
    _project, webhook = await _create_landing(ci_forgeline, fake_woodpecker)
    try:
        fake_woodpecker.stop()
        task_id = await ci_forgeline.build("landing", prompt="create hello.txt")
        events = await ci_forgeline.events(task_id)
        assert events[-1]["data"]["status"] == "failed"
        task = await ci_forgeline.wait_status(task_id, {"failed"}, timeout_s=60)
        assert "woodpecker" in task["result"]["error"].lower()
        assert task["result"]["artifacts"]["commit_sha"]
    finally:
        webhook.stop()
