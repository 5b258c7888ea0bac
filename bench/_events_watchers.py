"""The watchers of ``bench.events``: W raw SSE streams in one process of their own.

    python -m bench._events_watchers PORT TOKEN W TASK…

Streams are spread round robin over the tasks, on plain asyncio sockets (an HTTP client
library would cost this process more than the server it measures). It prints
``{"connected": W}`` once every stream has its response headers, then answers ``report``
on stdin, once every stream ended (after the tasks' ``result``), with the latencies of
every event at every watcher (receipt time minus the append time the event carries), how
many events arrived, and how many were missing, doubled or out of order (none expected),
how many streams were dropped as too slow (each resumed with ``Last-Event-ID``), and how
many requests were refused (any answer but 200; each tried again after 0.5 s).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class Stats:
    """What every watcher saw."""

    latencies: list[float] = field(default_factory=list)
    events: int = 0
    wrong: int = 0
    drops: int = 0
    refused: int = 0
    connected: int = 0
    ended: int = 0


async def chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The body of a chunked HTTP/1.1 response."""
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            return
        yield (await reader.readexactly(size + 2))[:-2]


async def watch(port: int, token: str, task: str, stats: Stats, ready: asyncio.Event) -> None:
    """Follow one task's stream to its ``result``, resuming after a drop."""
    position = 0
    first = True
    while True:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        resume = f"Last-Event-ID: {position}\r\n" if position else ""
        writer.write(
            f"GET /tasks/{task}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\n{resume}\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if head.split(b" ", 2)[1] != b"200":
            # Refused for now (503 while the database is saturated by every stream
            # opening at once): as a client does, again after a pause.
            writer.close()
            stats.refused += 1
            await asyncio.sleep(0.5)
            continue
        if first:
            first = False
            stats.connected += 1
            ready.set()
        buf = b""
        done = False
        async for chunk in chunks(reader):
            buf += chunk
            while (end := buf.find(b"\n\n")) != -1:
                frame, buf = buf[:end], buf[end + 2 :]
                if frame.startswith(b":"):
                    continue
                if frame.startswith(b"event: dropped"):
                    stats.drops += 1
                    continue
                data = frame[frame.index(b"data: ") + 6 :]
                event = json.loads(data)
                if event["seq"] != position + 1:
                    stats.wrong += 1
                position = event["seq"]
                if event["type"] == "result":
                    done = True
                    continue
                stats.events += 1
                stats.latencies.append(time.monotonic() - float(event["data"]["text"]))
        writer.close()
        if done:
            stats.ended += 1
            return


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank), NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    """Open the streams, then report on request."""
    port, token, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    tasks = sys.argv[4:]
    stats = Stats()
    ready = asyncio.Event()
    streams = [
        asyncio.create_task(watch(port, token, tasks[i % len(tasks)], stats, ready))
        for i in range(count)
    ]
    while stats.connected < count:
        ready.clear()
        await ready.wait()
    print(json.dumps({"connected": count}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "report":
            async with asyncio.timeout(120):
                await asyncio.gather(*streams)
            print(
                json.dumps(
                    {
                        "events": stats.events,
                        "p50_ms": quantile(stats.latencies, 0.5) * 1000,
                        "p99_ms": quantile(stats.latencies, 0.99) * 1000,
                        "max_ms": max(stats.latencies, default=float("nan")) * 1000,
                        "wrong": stats.wrong,
                        "drops": stats.drops,
                        "refused": stats.refused,
                        "ended": stats.ended,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main())
