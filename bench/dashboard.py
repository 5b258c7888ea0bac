"""Dashboard benchmark: a build page with thousands of events in a real browser.

Run from the repository root::

    .venv/bin/python -m bench.dashboard [--events 5000] [--rounds 5] [--live 30]

forgeline serves on 127.0.0.1 in this process (uvicorn, as ``forgeline serve`` wires it, on
SQLite, without workers); one queued build gets ``--events`` events written straight into
its store (tool calls, their results, messages, statuses: :mod:`tests.support.big_build`).
Debian's Chromium (headless, through Playwright) then measures, in the page's own clock
(``performance.now()`` from the start of navigation):

1. **Page usable**: the build page opened ``--rounds`` times in a fresh tab, until the
   document is loaded and every event of the stream has been received and the newest
   drawn (``#conversation[data-count=N]``), and then until "show earlier events" has drawn
   the page before (an interaction on the loaded page).
2. **New event to screen**: ``--live`` events appended one at a time to the open page's
   build; the time from the store's append returning to the event being in the page.

Progress goes to stderr; stdout gets the table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from playwright.async_api import Page
from tests.support.big_build import conversation_event, write_events
from tests.support.browser import chromium, new_page, sign_in
from tests.support.forgeline_server import running_forgeline, server_settings

#: What a page reports once all ``count`` events are in: ms since navigation started.
_ALL_DRAWN = """count => {
  const root = document.querySelector("#conversation");
  return root && root.dataset.count === String(count) ? performance.now() : false;
}"""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _open(page: Page, path: str, count: int) -> tuple[float, float, float]:
    """Open the build page; (DOMContentLoaded, all events drawn, earlier page drawn) in ms
    since navigation started."""
    await page.goto(path, wait_until="commit")
    drawn = await page.wait_for_function(_ALL_DRAWN, arg=count, polling="raf", timeout=60_000)
    all_drawn = float(await drawn.json_value())
    loaded = float(
        await page.evaluate(
            "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
        )
    )
    before = float(await page.evaluate("performance.now()"))
    await page.click("#conversation button.earlier")
    await page.wait_for_function(
        "() => document.querySelectorAll('#conversation .event').length > 200", polling="raf"
    )
    earlier = float(await page.evaluate("performance.now()")) - before
    return loaded, all_drawn, earlier


async def main(events: int, rounds: int, live: int) -> None:
    """Measure and print the table."""
    with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as tmp:
        settings = server_settings(Path(tmp) / "data", Path("claude"), workers=0)
        async with running_forgeline(settings) as forgeline, chromium() as browser:
            await forgeline.create_project("big")
            task_id = await forgeline.build("big", prompt="read every module")
            started = time.perf_counter()
            await write_events(forgeline.container.store, task_id, events)
            _log(f"{events} events stored in {time.perf_counter() - started:.1f} s")
            context, page = await new_page(browser, forgeline.url)
            await sign_in(page, forgeline.token)
            opened: list[tuple[float, float, float]] = []
            for number in range(rounds):
                tab = await context.new_page()
                opened.append(await _open(tab, f"/ui/tasks/{task_id}", events))
                _log(f"round {number + 1}: {opened[-1]}")
                await tab.close()

            await page.goto(f"/ui/tasks/{task_id}")
            await page.wait_for_function(_ALL_DRAWN, arg=events, polling="raf")
            latencies = []
            store = forgeline.container.store
            for number in range(events, events + live):
                start = time.perf_counter()
                await store.append_event(task_id, conversation_event(number))
                await page.wait_for_function(
                    f"() => document.querySelector('#conversation').dataset.lastSeq === "
                    f"'{number + 1}'",
                    polling="raf",
                )
                latencies.append((time.perf_counter() - start) * 1000)
                await asyncio.sleep(0.05)
            await context.close()

    def row(name: str, values: list[float]) -> str:
        return (
            f"{name:<44} {statistics.median(values):>8.0f} {max(values):>8.0f}  ms"
            f"  (n={len(values)})"
        )

    print(f"dashboard: build page with {events} events, Chromium headless, SQLite")
    print(f"{'':<44} {'median':>8} {'max':>8}")
    print(row("document loaded (DOMContentLoaded)", [o[0] for o in opened]))
    print(row(f"all {events} events in, newest drawn", [o[1] for o in opened]))
    print(row("'show earlier events' drawn (click)", [o[2] for o in opened]))
    print(row("new event: stored -> on the open page", latencies))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--live", type=int, default=30)
    options = parser.parse_args()
    asyncio.run(main(options.events, options.rounds, options.live))
