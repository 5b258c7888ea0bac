"""The web dashboard in a real browser (Debian's Chromium through Playwright) against a real
forgeline whose builds run the real ``claude`` on the scripted model server.

Every test writes screenshots of the pages it visits to ``<tmp>/screens`` (not committed)."""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, Request, expect

from forgeline.services.auth import Role
from tests.support.anthropic_server import (
    AnthropicServer,
    ApiRequest,
    Reply,
    Script,
    bash,
    hello_script,
    text,
)
from tests.support.big_build import write_events
from tests.support.browser import chromium, new_page, screenshot, sign_in
from tests.support.callback_receiver import CallbackReceiver
from tests.support.forgeline_server import (
    Running,
    running_forgeline,
    server_settings,
)
from tests.support.serve_process import live_processes
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.claude, pytest.mark.slow]

#: What a hostile agent says; none of it may run.
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium; no process of it outlives the test. Tests take it after the
    server, so it closes first: a page's open event stream would hold the server's
    shutdown."""
    async with chromium() as launched:
        yield launched
    assert live_processes("--disable-background-networking") == []  # Chromium's
    assert live_processes("run-driver") == []  # Playwright's


@pytest.fixture
def screens(tmp_path: Path) -> Path:
    """Where this test's screenshots go."""
    return tmp_path / "screens"


async def _page(browser: Browser, forgeline: Running) -> Page:
    _context, page = await new_page(browser, forgeline.url)
    return page


async def test_sign_in_and_out(forgeline: Running, browser: Browser, screens: Path) -> None:
    """``/`` leads to the sign-in form; a wrong token is refused there; the right one opens
    the overview with an HttpOnly, SameSite=Strict session cookie; signing out ends it."""
    page = await _page(browser, forgeline)
    await page.goto("/")
    await expect(page).to_have_url(re.compile(r"/ui/login$"))
    await screenshot(page, screens, "login")

    await page.fill("input[name=token]", "flt_not-a-token")
    await page.click("button[type=submit]")
    await expect(page.locator(".error")).to_have_text("unknown or revoked API token")
    await screenshot(page, screens, "login-refused")

    await sign_in(page, forgeline.token)
    await expect(page.locator("h1")).to_have_text("Projects")
    [cookie] = [c for c in await page.context.cookies() if c["name"] == "forgeline_session"]
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert forgeline.token not in cookie["value"]
    await screenshot(page, screens, "overview-empty")

    await page.click("text=Sign out")
    await expect(page).to_have_url(re.compile(r"/ui/login$"))
    await page.goto("/ui/")
    await expect(page).to_have_url(re.compile(r"/ui/login$"))


#: Installed before any page script: records what the Content-Security-Policy refused, so a
#: test can tell "nothing tried to run" from "something tried and was blocked".
WATCH_CSP = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


def _gated(gate: threading.Event) -> Script:
    """The hello.txt conversation, held before the agent's first tool call until ``gate``
    opens: the test has the build's page open before anything happens."""

    def script(req: ApiRequest) -> Reply:
        if req.has_tools and not req.tool_results:
            gate.wait(30)
        return hello_script(req)

    return script


async def test_build_from_the_form_arrives_live(
    forgeline: Running, browser: Browser, model: AnthropicServer, screens: Path
) -> None:
    """Create a project and start a build through the forms; on the build's page, opened
    before the agent acts, its tool call, the tool's result, the final message and the
    outcome appear without a reload; the steps and the overview follow."""
    gate = threading.Event()
    model.script = _gated(gate)
    page = await _page(browser, forgeline)
    await sign_in(page, forgeline.token)
    await page.fill("input[name=name]", "site")
    await page.click("text=Create project")
    await expect(page).to_have_url(re.compile(r"/ui/projects/site$"))
    await expect(page.locator("h1")).to_contain_text("site")
    await page.fill("textarea[name=prompt]", "Create hello.txt please")
    await page.click("text=Start build")
    await expect(page).to_have_url(re.compile(r"/ui/tasks/[0-9a-f-]+$"))
    conversation = page.locator("#conversation")
    await expect(conversation).to_have_attribute("data-state", "live")
    await page.evaluate("window.__sameDocument = true")
    await expect(conversation.locator(".event.tool_use")).to_have_count(0)
    overview = await page.context.new_page()
    await overview.goto("/ui/")
    await expect(overview.locator("table.builds")).to_contain_text("running")
    await overview.evaluate("window.__sameDocument = true")
    gate.set()

    tool_use = conversation.locator(".event.tool_use")
    await expect(tool_use).to_contain_text("Write")
    await expect(conversation.locator(".event.tool_result")).to_contain_text("result of Write")
    await expect(conversation.locator(".event.message").last).to_have_text(re.compile("done$"))
    await expect(conversation.locator(".event.result")).to_contain_text("succeeded")
    await expect(page.locator("#task-status")).to_have_text("completed")
    assert await page.evaluate("window.__sameDocument") is True
    # The overview open meanwhile caught up by itself.
    await expect(overview.locator("table.builds")).to_contain_text("completed")
    assert await overview.evaluate("window.__sameDocument") is True
    await overview.close()
    # Tool calls are collapsed; opened, they show their whole input.
    await expect(tool_use.locator("details pre")).to_be_hidden()
    await tool_use.locator("summary").click()
    await expect(tool_use.locator("details pre")).to_contain_text("hello from the fake API")
    await expect(page.locator("#steps li[data-step=checkout]")).to_contain_text("ok")
    await expect(page.locator("#steps li[data-step=push]")).to_contain_text("ok")
    await expect(page.locator("#stats")).to_contain_text("1 tool calls")
    # The diff of the pushed commit: the file the agent wrote, its line added.
    diff = page.locator("#diff")
    await expect(diff.locator(".diff-file summary")).to_contain_text("hello.txt")
    await expect(diff.locator(".diff-file summary")).to_contain_text("added")
    await expect(diff.locator("tr.line-added")).to_have_text(re.compile("hello from the fake API"))
    await screenshot(page, screens, "build-completed")
    first_build = page.url

    await page.click("#retry")
    await expect(page).not_to_have_url(first_build)
    await expect(page.locator("#summary")).to_contain_text("Re-run of")
    await expect(page.locator("#conversation .event.result")).to_contain_text("succeeded")
    await expect(page.locator("#task-status")).to_have_text("completed")
    await screenshot(page, screens, "build-rerun")

    await page.click("#summary >> text=site")
    await expect(page.locator("#builds tbody tr")).to_have_count(2)
    await screenshot(page, screens, "project")
    await page.click("text=Overview")
    await expect(page.locator("table.projects")).to_contain_text("completed")
    await expect(page.locator("table.builds")).to_contain_text("Create hello.txt please")
    await page.select_option("select[name=status]", "failed")
    await page.click("text=Filter")
    await expect(page.locator("table.builds")).to_have_count(0)
    await page.select_option("select[name=status]", "completed")
    await page.click("text=Filter")
    await expect(page.locator("table.builds tbody tr")).to_have_count(2)
    await screenshot(page, screens, "overview")

    # With its repository gone, a build's page still opens; only its diff says why not.
    shutil.rmtree(Path(forgeline.settings.git_base_url) / "site.git")
    answer = await page.goto(first_build)
    assert answer is not None
    assert answer.status == 200
    await expect(page.locator("#diff .error")).not_to_be_empty()
    await expect(page.locator("#conversation .event.result")).to_contain_text("succeeded")


def _sleeping(req: ApiRequest) -> Reply:
    if req.tool_results:
        return [text("done")]
    return [bash("sleep 30; echo finished > slept.txt")]


async def test_cancel_a_running_build(
    forgeline: Running,
    browser: Browser,
    model: AnthropicServer,
    receiver: CallbackReceiver,
    screens: Path,
) -> None:
    """The cancel button of a running build stops it; its page shows ``cancelled``, then
    the delivery of its callback."""
    model.script = _sleeping
    await forgeline.create_project("sleepy")
    task_id = await forgeline.build("sleepy", prompt="take a nap", callback_url=receiver.url())
    page = await _page(browser, forgeline)
    await sign_in(page, forgeline.token)
    await page.goto(f"/ui/tasks/{task_id}")
    await expect(page.locator("#conversation .event.tool_use")).to_contain_text("sleep 30")
    await expect(page.locator("#task-status")).to_have_text("running")
    await screenshot(page, screens, "build-running")
    await page.click("#cancel")
    await expect(page.locator("#task-status")).to_have_text("cancelled")
    await expect(page.locator("#conversation .event.result")).to_contain_text("cancelled")
    await expect(page.locator("#cancel")).to_have_count(0)
    assert (await forgeline.task(task_id))["status"] == "cancelled"
    callbacks = page.locator("table.callbacks")
    await expect(callbacks).to_contain_text("build.completed")
    await expect(callbacks).to_contain_text("delivered")
    await expect(callbacks).to_contain_text("200")
    await screenshot(page, screens, "build-cancelled")


def _hostile(req: ApiRequest) -> Reply:
    if req.tool_results:
        return [text(f"done {HOSTILE}")]
    return [text(f"Here it is: {HOSTILE}"), bash(f"printf '%s' '{HOSTILE}'")]


async def test_hostile_output_is_text(
    forgeline: Running, browser: Browser, model: AnthropicServer, screens: Path
) -> None:
    """Markup in agent output, tool input and output and the prompt is shown as text on
    every page, and nothing of it runs (the CSP saw nothing to refuse)."""
    model.script = _hostile
    await forgeline.create_project("xss")
    task_id = await forgeline.build("xss", prompt=f"echo {HOSTILE}")
    await forgeline.wait_status(task_id, {"completed", "failed"}, timeout_s=60)
    context, page = await new_page(browser, forgeline.url)
    await context.add_init_script(WATCH_CSP)
    await sign_in(page, forgeline.token)
    await page.goto(f"/ui/tasks/{task_id}")
    conversation = page.locator("#conversation")
    await expect(conversation.locator(".event.result")).to_have_count(1)
    await expect(conversation.locator(".event.message pre").first).to_have_text(
        f"Here it is: {HOSTILE}"
    )
    await conversation.locator(".event.tool_result summary").click()
    await expect(conversation.locator(".event.tool_result pre")).to_have_text(HOSTILE)
    await expect(page.locator(".prompt-text")).to_have_text(f"echo {HOSTILE}")
    await screenshot(page, screens, "build-hostile")
    for path in (f"/ui/tasks/{task_id}", "/ui/projects/xss", "/ui/"):
        await page.goto(path)
        await expect(page.locator("main")).to_contain_text("<img src=x onerror=")
        assert await page.locator("main img, main script").count() == 0
        assert await page.evaluate("window.__pwned") is None
        assert await page.evaluate("window.__violations") == []


async def test_forms_refuse_requests_without_their_csrf_token(
    forgeline: Running, browser: Browser
) -> None:
    """A signed-in browser's POST without the form's CSRF token, or with another
    session's, is refused and changes nothing."""
    page = await _page(browser, forgeline)
    await sign_in(page, forgeline.token)
    stolen = await page.locator("input[name=csrf_token]").first.get_attribute("value")
    other = await _page(browser, forgeline)
    await sign_in(other, forgeline.token)
    forms: list[dict[str, str | float | bool]] = [
        {"name": "evil"},
        {"name": "evil", "csrf_token": "0" * 64},
    ]
    for form in forms:
        answer = await page.request.post("/ui/projects", form=form, max_redirects=0)
        assert answer.status == 403
        assert "reload the page" in await answer.text()
    answer = await other.request.post(
        "/ui/projects", form={"name": "evil", "csrf_token": stolen or ""}, max_redirects=0
    )
    assert answer.status == 403
    assert (await forgeline.client.get("/projects/evil")).status_code == 404


async def test_builder_token_sees_its_projects_only(
    forgeline: Running, browser: Browser, screens: Path
) -> None:
    """A builder token limited to one project sees that project and its builds only: not
    another project, its builds or their event stream; no admin link, and the admin pages
    and forms refuse it."""
    await forgeline.create_project("mine")
    await forgeline.create_project("theirs")
    theirs = await forgeline.build("theirs", prompt="Create hello.txt please")
    await forgeline.wait_status(theirs, {"completed"})
    bot = await forgeline.container.auth.create("bot", Role.BUILDER, ["mine"])
    page = await _page(browser, forgeline)
    await sign_in(page, bot.value)
    await expect(page.locator("table.projects")).to_contain_text("mine")
    await expect(page.locator("table.projects")).not_to_contain_text("theirs")
    await expect(page.locator("text=No builds yet.")).to_have_count(1)
    await expect(page.locator("header nav")).not_to_contain_text("Credentials")
    await expect(page.locator("header nav")).not_to_contain_text("Tokens")
    await expect(page.locator("text=New project")).to_have_count(0)
    await screenshot(page, screens, "overview-builder")
    for path, status in (
        ("/ui/projects/theirs", 403),
        (f"/ui/tasks/{theirs}", 404),
        (f"/tasks/{theirs}/events?format=json", 404),
        ("/ui/admin/credentials", 403),
        ("/ui/admin/tokens", 403),
    ):
        opened = await page.goto(path)
        assert opened is not None
        assert opened.status == status, path
    await expect(page.locator(".error")).to_contain_text("'builder'")
    await screenshot(page, screens, "admin-refused")
    await page.goto("/ui/projects/mine")
    csrf = await page.locator("input[name=csrf_token]").first.get_attribute("value")
    for path, form in (
        ("/ui/admin/tokens", {"name": "mine", "role": "admin"}),
        ("/ui/projects/theirs/builds", {"prompt": "Create hello.txt please"}),
        (f"/ui/tasks/{theirs}/retry", {}),
    ):
        answer = await page.request.post(path, form={**form, "csrf_token": csrf or ""})
        assert answer.status in {403, 404}, path
    assert (
        len((await forgeline.client.get("/tasks", params={"project": "theirs"})).json()["items"])
        == 1
    )


async def test_admin_pages(forgeline: Running, browser: Browser, screens: Path) -> None:
    """Credentials are set and deleted without their value ever shown; a new token is
    shown once; agents show their availability."""
    page = await _page(browser, forgeline)
    await sign_in(page, forgeline.token)
    await page.click("text=Credentials")
    await page.fill("input[name=name]", "deploy-key")
    await page.fill("textarea[name=value]", "s3cr3t-value-1234")
    await page.click("text=Save")
    await expect(page.locator("table.credentials")).to_contain_text("deploy-key")
    assert "s3cr3t-value-1234" not in await page.content()
    await screenshot(page, screens, "credentials")
    await page.click("table.credentials >> text=Delete")
    await expect(page.locator("table.credentials")).to_have_count(0)

    await page.click("header >> text=Tokens")
    await page.fill("input[name=name]", "release-bot")
    await page.click("text=Create token")
    value = await page.locator("#new-token").text_content()
    assert value is not None
    assert value.startswith("flt_")
    await screenshot(page, screens, "token-created")
    assert (await forgeline.container.auth.verify(value)).role == "builder"
    await page.goto("/ui/admin/tokens")
    assert value not in await page.content()
    bot = await _page(browser, forgeline)
    await sign_in(bot, value)
    row = page.locator("table.tokens tr", has_text="release-bot")
    await expect(row).to_contain_text("builder")
    await screenshot(page, screens, "tokens")
    await row.locator("text=Revoke").click()
    await expect(page.locator("table.tokens")).not_to_contain_text("release-bot")
    # A revoked token's session ends with it.
    await bot.goto("/ui/")
    await expect(bot).to_have_url(re.compile(r"/ui/login$"))

    await page.click("text=Agents")
    await expect(page.locator("table.agents")).to_contain_text("claude-code")
    await expect(page.locator("table.agents tr", has_text="claude-code")).to_contain_text(
        "available"
    )
    await screenshot(page, screens, "agents")


async def test_pages_are_sent_with_security_headers(forgeline: Running) -> None:
    """Every page forbids inline script, framing and caching; the session and CSRF
    cookies are HttpOnly and SameSite=Strict."""
    async with httpx.AsyncClient(base_url=forgeline.url) as client:
        login = await client.get("/ui/login")
        assert "script-src 'self';" in login.headers["content-security-policy"]
        assert "unsafe-inline" not in login.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in login.headers["content-security-policy"]
        assert login.headers["cache-control"] == "no-store"
        assert "httponly" in login.headers["set-cookie"].lower()
        assert "samesite=strict" in login.headers["set-cookie"].lower()
        csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', login.text)
        assert csrf is not None
        signed = await client.post(
            "/ui/login", data={"token": forgeline.token, "csrf_token": csrf[1]}
        )
        assert signed.status_code == 303
        assert signed.headers["location"] == "/ui/"
        session = signed.headers["set-cookie"].lower()
        assert "forgeline_session=" in session
        assert "httponly" in session
        assert "samesite=strict" in session
        # The session reads the event stream a browser cannot send a header to.
        await forgeline.create_project("headers")
        task_id = await forgeline.build("headers", prompt="Create hello.txt please")
        events = await client.get(f"/tasks/{task_id}/events", params={"format": "json"})
        assert events.status_code == 200
        # ...and nothing else of the API.
        assert (await client.get(f"/tasks/{task_id}")).status_code == 401


@pytest.fixture
async def idle_forgeline(tmp_path: Path, claude_bin: Path) -> AsyncIterator[Running]:
    """forgeline without workers: a build stays queued while the test writes its events."""
    settings = server_settings(tmp_path / "data", claude_bin, workers=0)
    async with running_forgeline(settings) as running:
        await running.create_project("big")
        yield running


async def test_a_build_with_5000_events(
    idle_forgeline: Running, browser: Browser, screens: Path
) -> None:
    """The page of a build with 5,000 events receives them all but draws the newest 200;
    earlier ones come 200 at a time on request; a new event is drawn as it is stored."""
    forgeline = idle_forgeline
    task_id = await forgeline.build("big", prompt="read every module")
    await write_events(forgeline.container.store, task_id, 5000)
    page = await _page(browser, forgeline)
    await sign_in(page, forgeline.token)
    await page.goto(f"/ui/tasks/{task_id}")
    conversation = page.locator("#conversation")
    events = conversation.locator(".event")
    await expect(conversation).to_have_attribute("data-count", "5000")
    await expect(events).to_have_count(200)
    await expect(events.last).to_have_attribute("data-seq", "5000")
    earlier = conversation.locator("button.earlier")
    await expect(earlier).to_have_text("Show 200 earlier events (4800 hidden)")
    await earlier.click()
    await expect(events).to_have_count(400)
    await expect(events.first).to_have_attribute("data-seq", "4601")
    await expect(page.locator("#stats")).to_contain_text("5000 events")
    await write_events(forgeline.container.store, task_id, 1, start=5000)
    await expect(conversation).to_have_attribute("data-count", "5001")
    await expect(events.last).to_have_attribute("data-seq", "5001")
    await screenshot(page, screens, "build-5000-events")


async def test_a_dropped_stream_resumes_without_loss_or_doubles(
    idle_forgeline: Running, browser: Browser
) -> None:
    """When the connection under the event stream breaks, the browser reconnects with
    ``Last-Event-ID`` and the page goes on from there: every event shown once, in order."""
    forgeline = idle_forgeline
    task_id = await forgeline.build("big", prompt="read every module")
    await write_events(forgeline.container.store, task_id, 10)
    proxy = TcpProxy(int(forgeline.url.rsplit(":", 1)[1]))
    try:
        _context, page = await new_page(browser, proxy.url)
        streams: list[Request] = []
        page.on("request", lambda r: streams.append(r) if r.url.endswith("/events") else None)
        await sign_in(page, forgeline.token)
        await page.goto(f"/ui/tasks/{task_id}")
        conversation = page.locator("#conversation")
        await expect(conversation).to_have_attribute("data-count", "10")
        proxy.cut()
        await expect(conversation).to_have_attribute("data-state", "reconnecting")
        await write_events(forgeline.container.store, task_id, 2, start=10)
        await expect(conversation).to_have_attribute("data-count", "12")
        await expect(conversation).to_have_attribute("data-state", "live")
        shown = await conversation.locator(".event").evaluate_all(
            "items => items.map(item => Number(item.dataset.seq))"
        )
        assert shown == list(range(1, 13))
        resumed = [(await r.all_headers()).get("last-event-id") for r in streams]
        assert resumed[0] is None
        assert resumed[1:] == ["10"] * (len(resumed) - 1)
        await page.close()
    finally:
        proxy.stop()
