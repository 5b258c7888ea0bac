"""Debian's Chromium driven by Playwright, for the dashboard's tests and benchmark.

Playwright's own browser download needs a network; the Chromium that ``scripts/setup-system``
installs is used instead (``executable_path``). The machine has no network for it either, so
every background fetch Chromium would make is turned off. As root, Chromium refuses to start
with its own sandbox: ``--no-sandbox`` (the page only ever loads forgeline on 127.0.0.1).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, Page, async_playwright

#: Flags of every launch: no network of its own, no first-run work, no crash reporter.
CHROMIUM_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--disable-extensions",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--disable-dev-shm-usage",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-service-autorun",
    "--password-store=basic",
]


def chromium_path() -> str:
    """Debian's Chromium (``FORGELINE_CHROMIUM`` may name another); a clear failure when
    it is missing."""
    path = os.environ.get("FORGELINE_CHROMIUM") or shutil.which("chromium")
    if not path:
        raise RuntimeError("chromium is not installed: run scripts/setup-system")
    return path


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium, closed (with every process of it) when the block ends."""
    args = list(CHROMIUM_ARGS)
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), args=args, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(browser: Browser, base_url: str) -> tuple[BrowserContext, Page]:
    """A fresh browser profile (no cookies) on ``base_url``, failing on any page error."""
    context = await browser.new_context(base_url=base_url)
    context.set_default_timeout(30_000)
    page = await context.new_page()
    return context, page


async def sign_in(page: Page, token: str) -> None:
    """Sign in through the form and land on the overview."""
    await page.goto("/ui/login")
    await page.fill("input[name=token]", token)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/ui/")


async def screenshot(page: Page, directory: Path, name: str) -> Path:
    """A full-page screenshot into ``directory`` (the test's tmp dir: never committed;
    Playwright makes the directory)."""
    path = directory / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
