"""The Woodpecker client against the fake Woodpecker server (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from forgeline.adapters.ci.woodpecker import WoodpeckerClient, parse_pipeline
from forgeline.domain.errors import ExternalServiceError
from forgeline.domain.secrets import Secret
from forgeline.ports.ci import CIProvider, PipelineStatus
from tests.conftest import free_port
from tests.support.fake_woodpecker import FakeWoodpecker

SHA = "3f2a9c1d5e7b4a60b8c2d1e0f9a8b7c6d5e4f3a2"


@pytest.fixture
def fake(fake_woodpecker: FakeWoodpecker) -> FakeWoodpecker:
    """The fake Woodpecker server of conftest, under a short name."""
    return fake_woodpecker


def make_client(url: str, token: str) -> WoodpeckerClient:
    """A client with quick polling and backoff, so tests wait milliseconds, not seconds."""
    return WoodpeckerClient(
        url,
        Secret(token, name="woodpecker-token"),
        max_attempts=3,
        poll_interval_s=0.02,
        backoff_s=0.01,
        backoff_max_s=0.05,
    )


@pytest.fixture
async def client(fake: FakeWoodpecker) -> AsyncIterator[WoodpeckerClient]:
    """The client under test, closed after the test."""
    async with make_client(fake.url, fake.token) as wp:
        yield wp


async def active_repo(fake: FakeWoodpecker, client: WoodpeckerClient) -> int:
    """An activated repository's id."""
    fake.add_forge_repo("acme/myapp", head=SHA)
    return await client.activate("acme/myapp")


def test_client_satisfies_the_port() -> None:
    """WoodpeckerClient is a CIProvider (checked by mypy through this assignment)."""
    provider: CIProvider = WoodpeckerClient("http://127.0.0.1:9", Secret("t"))
    assert provider is not None
    asyncio.run(provider.aclose())


async def test_activate_finds_forge_repo_and_returns_integer_id(
    fake: FakeWoodpecker, client: WoodpeckerClient
) -> None:
    """Activation lists the forge repos, posts its forge_remote_id and returns the int id."""
    forge = fake.add_forge_repo("acme/myapp")
    repo_id = await client.activate("acme/myapp")
    assert isinstance(repo_id, int)
    assert repo_id == forge.repo_id
    assert fake.requests == [("GET", "/api/user/repos"), ("POST", "/api/repos")]


async def test_activating_twice_is_fine(fake: FakeWoodpecker, client: WoodpeckerClient) -> None:
    """A 409 (already active) resolves to the same id through the lookup endpoint."""
    forge = fake.add_forge_repo("acme/myapp")
    first = await client.activate("acme/myapp")
    second = await client.activate("acme/myapp", forge_remote_id=forge.forge_remote_id)
    assert first == second
    assert fake.requests[-2:] == [("POST", "/api/repos"), ("GET", "/api/repos/lookup/acme/myapp")]
    before = len(fake.requests)
    assert await client.activate("acme/myapp") == first  # the listing says it is active
    assert fake.requests[before:] == [("GET", "/api/user/repos")]


async def test_activation_refused_for_non_admin(
    fake: FakeWoodpecker, client: WoodpeckerClient
) -> None:
    """A 403 says the token's user is not admin of the repository on the forge."""
    fake.add_forge_repo("acme/theirs", admin=False)
    with pytest.raises(ExternalServiceError) as caught:
        await client.activate("acme/theirs")
    assert caught.value.status_code == 403
    assert "not admin" in str(caught.value)


async def test_activation_of_unknown_repository(
    fake: FakeWoodpecker, client: WoodpeckerClient
) -> None:
    """A repository the forge does not list is a clear error naming it."""
    fake.add_forge_repo("acme/other")
    with pytest.raises(ExternalServiceError, match="acme/missing"):
        await client.activate("acme/missing")


async def test_secrets_created_then_updated_for_push_and_manual(
    fake: FakeWoodpecker, client: WoodpeckerClient
) -> None:
    """Secrets get events push+manual; a second call updates instead of duplicating."""
    repo_id = await active_repo(fake, client)
    await client.set_secrets(
        repo_id,
        {"kubeconfig": Secret("kube-v1-abcdef"), "Registry_User": Secret("robot-abcdef")},
    )
    await client.set_secrets(
        repo_id,
        {"kubeconfig": Secret("kube-v2-abcdef"), "registry_password": Secret("pw-abcdef")},
    )
    stored = fake.secrets(repo_id)
    assert sorted(stored) == ["kubeconfig", "registry_password", "registry_user"]
    assert stored["kubeconfig"]["value"] == "kube-v2-abcdef"
    assert all(s["events"] == ["push", "manual"] for s in stored.values())
    assert ("PATCH", f"/api/repos/{repo_id}/secrets/kubeconfig") in fake.requests


async def test_fake_is_faithful_about_ids_and_secret_events(
    fake: FakeWoodpecker, client: WoodpeckerClient
) -> None:
    """The fake answers 400 to a non-integer repo id and 422 to a secret without events,
    401 without the token, and never returns secret values."""
    repo_id = await active_repo(fake, client)
    headers = {"Authorization": f"Bearer {fake.token}"}
    async with httpx.AsyncClient(base_url=fake.url, headers=headers) as raw:
        by_name = await raw.get("/api/repos/acme%2Fmyapp/pipelines")
        assert by_name.status_code in (400, 404)
        assert (await raw.get("/api/repos/myapp/secrets")).status_code == 400
        no_events = await raw.post(
            f"/api/repos/{repo_id}/secrets", json={"name": "x", "value": "y"}
        )
        assert no_events.status_code == 422
        assert "event" in no_events.text
        made = await raw.post(
            f"/api/repos/{repo_id}/secrets", json={"name": "x", "value": "y", "events": ["push"]}
        )
        assert made.status_code == 200
        assert "value" not in made.json()
        assert (await raw.get(f"/api/repos/{repo_id}/secrets", headers={})).status_code == 200
    async with httpx.AsyncClient(base_url=fake.url) as anonymous:
        assert (await anonymous.get(f"/api/repos/{repo_id}/secrets")).status_code == 401


async def test_non_integer_ids_are_refused_before_sending(client: WoodpeckerClient) -> None:
    """The client refuses an owner/name where Woodpecker wants the integer repo id."""
    with pytest.raises(TypeError, match="integers"):
        await client.get_pipeline("acme/myapp", 1)  # type: ignore[arg-type]


async def test_find_pipeline_waits_for_the_push_pipeline(
    fake: FakeWoodpecker, client: WoodpeckerClient
) -> None:
    """The pipeline of a pushed commit is found once the webhook has created it."""
    repo_id = await active_repo(fake, client)
    fake.push(repo_id, "1" * 40)  # an older push, not ours
    finding = asyncio.create_task(client.find_pipeline(repo_id, SHA, timeout_s=10))
    path = f"/api/repos/{repo_id}/pipelines"
    assert await asyncio.to_thread(fake.wait_for_requests, "GET", path, 2, 10)
    number = fake.push(repo_id, SHA)
    found = await finding
    assert found is not None
    assert (found.number, found.commit, found.event, found.status) == (
        number,
        SHA,
        "push",
        "pending",
    )
    assert found.url == f"{fake.url}/repos/{repo_id}/pipeline/{number}"


async def test_find_pipeline_gives_up_after_its_timeout(
    fake: FakeWoodpecker, client: WoodpeckerClient
) -> None:
    """No pipeline for the commit within the timeout: None, not an endless wait."""
    repo_id = await active_repo(fake, client)
    assert await client.find_pipeline(repo_id, SHA[:12], timeout_s=0.1) is None


async def test_manual_trigger_carries_variables(
    fake: FakeWoodpecker, client: WoodpeckerClient
) -> None:
    """An API-triggered pipeline runs the branch head with event manual and our variables."""
    repo_id = await active_repo(fake, client)
    started = await client.trigger(repo_id, "main", {"TASK_ID": "task-42"})
    assert started is not None
    assert (started.event, started.status, started.commit) == ("manual", "pending", SHA)
    assert fake.pipelines(repo_id)[-1]["variables"] == {"TASK_ID": "task-42"}


async def test_trigger_when_nothing_runs(fake: FakeWoodpecker, client: WoodpeckerClient) -> None:
    """A 204 without body (config filters skipped everything) is None."""
    repo_id = await active_repo(fake, client)
    fake.filter_all(repo_id)
    assert await client.trigger(repo_id, "main", {"TASK_ID": "t"}) is None
    assert fake.pipelines(repo_id) == []


def driver(
    fake: FakeWoodpecker, repo_id: int, final: str, failing_step: str | None = None
) -> tuple[list[str], Callable[[PipelineStatus], Awaitable[None]]]:
    """An ``on_change`` listener that moves the fake on each time the client sees a change:
    pending → running → ``final``; it records the statuses seen."""
    seen: list[str] = []

    async def on_change(status: PipelineStatus) -> None:
        seen.append(status.status)
        if status.status == "pending":
            fake.set_status(repo_id, status.number, "running")
        elif status.status == "running":
            fake.set_status(repo_id, status.number, final, failing_step=failing_step)

    return seen, on_change


async def test_follow_to_success(fake: FakeWoodpecker, client: WoodpeckerClient) -> None:
    """Following reports pending, running, success, and stops at the final status."""
    repo_id = await active_repo(fake, client)
    started = await client.trigger(repo_id, "main", {})
    assert started is not None
    seen, on_change = driver(fake, repo_id, "success")
    final = await client.follow(repo_id, started.number, timeout_s=10, on_change=on_change)
    assert seen == ["pending", "running", "success"]
    assert final.is_final
    assert final.succeeded
    assert final.failed_step is None
    assert [s.state for s in final.steps] == ["success"] * 3


async def test_follow_to_failure_names_the_failing_step(
    fake: FakeWoodpecker, client: WoodpeckerClient
) -> None:
    """A failed pipeline names the step that failed."""
    repo_id = await active_repo(fake, client)
    number = fake.push(repo_id, SHA, steps=("clone", "build", "image", "deploy"))
    seen, on_change = driver(fake, repo_id, "failure", failing_step="build")
    final = await client.follow(repo_id, number, timeout_s=10, on_change=on_change)
    assert seen == ["pending", "running", "failure"]
    assert (final.status, final.failed_step) == ("failure", "build")
    assert [s.state for s in final.steps] == ["success", "failure", "skipped", "skipped"]
    assert final.to_dict()["failed_step"] == "build"


async def test_follow_returns_the_running_pipeline_at_its_timeout(
    fake: FakeWoodpecker, client: WoodpeckerClient
) -> None:
    """At the timeout the last status comes back, not final, for the caller to decide."""
    repo_id = await active_repo(fake, client)
    number = fake.push(repo_id, SHA)
    fake.set_status(repo_id, number, "running")
    last = await client.follow(repo_id, number, timeout_s=0.1)
    assert (last.status, last.is_final) == ("running", False)


async def test_cancel_running_then_finished(fake: FakeWoodpecker, client: WoodpeckerClient) -> None:
    """Cancelling stops a running pipeline; cancelling it again, now final, is fine."""
    repo_id = await active_repo(fake, client)
    number = fake.push(repo_id, SHA)
    fake.set_status(repo_id, number, "running")
    await client.cancel(repo_id, number)
    assert fake.status_of(repo_id, number) == "killed"
    await client.cancel(repo_id, number)
    after = await client.get_pipeline(repo_id, number)
    assert after.is_final
    assert after.failed_step == "clone"  # the step that was running was killed


async def test_server_errors_are_retried(fake: FakeWoodpecker, client: WoodpeckerClient) -> None:
    """Two 5xx answers, then success: the call succeeds after three attempts."""
    repo_id = await active_repo(fake, client)
    number = fake.push(repo_id, SHA)
    before = len(fake.requests)
    fake.fail_next(2, 502)
    assert (await client.get_pipeline(repo_id, number)).number == number
    assert len(fake.requests) - before == 3


async def test_persistent_server_errors_end_in_a_clear_error(
    fake: FakeWoodpecker, client: WoodpeckerClient
) -> None:
    """5xx on every attempt: a bounded number of tries, then method, path, status, body."""
    repo_id = await active_repo(fake, client)
    before = len(fake.requests)
    fake.fail_next(10, 503)
    with pytest.raises(ExternalServiceError) as caught:
        await client.get_pipeline(repo_id, 7)
    error = caught.value
    assert len(fake.requests) - before == 3
    assert (error.method, error.path, error.status_code) == (
        "GET",
        f"/api/repos/{repo_id}/pipelines/7",
        503,
    )
    assert error.body_excerpt == "upstream trouble"
    assert "after 3 attempts" in str(error)
    assert fake.token not in str(error)


async def test_server_down_is_retried_then_reported(fake: FakeWoodpecker) -> None:
    """A dead server: connection errors retried a bounded number of times, then one clear
    error naming the server, method and path, without the token."""
    async with make_client(fake.url, fake.token) as client:
        fake.add_forge_repo("acme/myapp")
        repo_id = await client.activate("acme/myapp")  # a kept-alive connection now exists
        fake.stop()
        with pytest.raises(ExternalServiceError) as caught:
            await client.trigger(repo_id, "main", {"TASK_ID": "t"})
    message = str(caught.value)
    assert "cannot reach" in message
    assert "after 3 attempts" in message
    assert f"POST /api/repos/{repo_id}/pipelines" in message
    assert fake.token not in message
    assert isinstance(caught.value.__cause__, httpx.TransportError)


async def test_nothing_listening_at_all() -> None:
    """A port nobody listens on fails the same clear way."""
    url = f"http://127.0.0.1:{free_port()}"
    async with make_client(url, "secret-token-value") as client:
        with pytest.raises(ExternalServiceError, match="cannot reach") as caught:
            await client.lookup("acme/myapp")
    assert "secret-token-value" not in str(caught.value)


async def test_wrong_token_is_rejected_without_retry(fake: FakeWoodpecker) -> None:
    """A wrong token is a 401 error at once (no retries), and never shows the token."""
    fake.add_forge_repo("acme/myapp")
    async with make_client(fake.url, "not-the-right-token") as client:
        with pytest.raises(ExternalServiceError) as caught:
            await client.activate("acme/myapp")
    assert caught.value.status_code == 401
    assert "token rejected" in str(caught.value)
    assert "not-the-right-token" not in str(caught.value)
    assert "not-the-right-token" not in repr(client.__dict__)
    assert len(fake.requests) == 1


def test_parse_pipeline_tolerates_unknown_fields_and_rejects_garbage() -> None:
    """Unknown fields are ignored; a pipeline without number/status is a protocol error."""
    status = parse_pipeline(
        {
            "number": 3,
            "status": "error",
            "errors": [{"message": "yaml: line 3: bad indentation"}],
            "brand_new_field": {"x": 1},
            "workflows": [{"children": [{"name": "build", "state": "error", "exit_code": 126}]}],
        }
    )
    assert (status.number, status.status, status.failed_step) == (3, "error", "build")
    assert status.error == "yaml: line 3: bad indentation"
    assert status.steps[0].exit_code == 126
    with pytest.raises(ExternalServiceError):
        parse_pipeline({"status": "success"})
    with pytest.raises(ExternalServiceError):
        parse_pipeline(["not", "an", "object"])


async def test_autorun_pipelines_advance_as_they_are_read(
    fake: FakeWoodpecker, client: WoodpeckerClient
) -> None:
    """With autorun, a pipeline runs to its scripted end while a client follows it."""
    repo_id = await active_repo(fake, client)
    fake.autorun(repo_id, "failure", failing_step="deploy")
    started = await client.trigger(repo_id, "main", {"TASK_ID": "t-1"})
    assert started is not None
    seen: list[str] = []

    async def record(status: PipelineStatus) -> None:
        seen.append(status.status)

    final = await client.follow(repo_id, started.number, timeout_s=10, on_change=record)
    assert seen == ["pending", "running", "failure"]
    assert final.failed_step == "deploy"


async def test_many_secrets_are_paged(fake: FakeWoodpecker, client: WoodpeckerClient) -> None:
    """Existing secrets beyond the first page are still found and updated, not duplicated."""
    repo_id = await active_repo(fake, client)
    first = {f"s{i:03d}": Secret(f"value-{i:03d}") for i in range(120)}
    await client.set_secrets(repo_id, first)
    await client.set_secrets(repo_id, {"s110": Secret("changed-value")})
    stored = fake.secrets(repo_id)
    assert len(stored) == 120
    assert stored["s110"]["value"] == "changed-value"


async def test_following_stops_when_the_caller_is_cancelled(
    fake: FakeWoodpecker, client: WoodpeckerClient
) -> None:
    """Cancelling the task that follows ends the wait at once; the pipeline is untouched."""
    repo_id = await active_repo(fake, client)
    number = fake.push(repo_id, SHA)
    fake.set_status(repo_id, number, "running")
    path = f"/api/repos/{repo_id}/pipelines/{number}"
    following = asyncio.create_task(client.follow(repo_id, number, timeout_s=600))
    assert await asyncio.to_thread(fake.wait_for_requests, "GET", path, 2, 10)
    following.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await following
    assert fake.status_of(repo_id, number) == "running"


async def test_bootstrap_builds_the_client_only_when_configured(fake: FakeWoodpecker) -> None:
    """No URL: no CI step (None). A URL without its token credential is a configuration
    error. URL and token: a working client."""
    from forgeline.bootstrap import build_ci
    from forgeline.domain.errors import ConfigurationError
    from forgeline.settings import Settings

    assert build_ci(Settings(woodpecker_url=None), None) is None
    configured = Settings(woodpecker_url=fake.url, woodpecker_poll_interval_s=0.01)
    with pytest.raises(ConfigurationError, match="woodpecker-token"):
        build_ci(configured, None)
    client = build_ci(configured, Secret(fake.token))
    assert client is not None
    try:
        fake.add_forge_repo("acme/myapp")
        assert await client.activate("acme/myapp") > 0
    finally:
        await client.aclose()
