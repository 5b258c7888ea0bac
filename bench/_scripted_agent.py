"""A build worker process with :class:`~forgeline.testing.ScriptedAgent`, for benchmarks.

Run as a module it is one build worker process (what ``forgeline worker`` runs, with this
agent in place of ``claude``), driven by lines on stdin so a benchmark can measure its
memory around a batch::

    python -m bench._scripted_agent --data-dir D --database-url URL --concurrency 20

It prints one JSON line when ready, then answers ``mark`` (the RSS now becomes the
baseline, the peaks are reset) and ``report`` (see :meth:`Memory.report`, plus runs and
most concurrent runs) with one JSON line each; ``exit``, end of stdin, SIGTERM or
``--max-seconds`` stop it (running builds drain as on a real worker's shutdown).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

from forgeline.bootstrap import open_container
from forgeline.logs import Redactor, configure_logging
from forgeline.services.registry import ProviderRegistry
from forgeline.settings import Settings
from forgeline.testing import ScriptedAgent

# --- the worker process -----------------------------------------------------------------------


def rss_kb() -> int:
    """This process's resident set size now, in KiB (Linux ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text(encoding="ascii").split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def hwm_kb() -> int:
    """The kernel's high-water mark of this process's RSS (``VmHWM``), in KiB."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def max_rss_kb() -> int:
    """``ru_maxrss`` (KiB on Linux). Beware: Linux carries over ``exec`` the high-water
    mark of the process that forked this one, so a process started by a big parent
    reports at least the parent's size; :func:`hwm_kb` is this process's own."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Memory:
    """The process's memory around a batch: the RSS sampled every ``interval_s`` and the
    kernel's ``VmHWM``, both reset by :meth:`mark` (``VmHWM`` through
    ``/proc/self/clear_refs``, Linux 4.0+), so the peak between a mark and a report is
    exact even for a spike shorter than the sampling interval."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.ready = self.snapshot()
        self.baseline = self.ready
        self.sampled_peak_kb = self.sampled_lifetime_peak_kb = self.ready["rss_kb"]
        self.hwm_reset = False

    @staticmethod
    def snapshot() -> dict[str, int]:
        """RSS, VmHWM and ru_maxrss now."""
        return {"rss_kb": rss_kb(), "hwm_kb": hwm_kb(), "ru_maxrss_kb": max_rss_kb()}

    def mark(self) -> dict[str, int]:
        """Reset both peaks to the RSS now; the snapshot after the reset."""
        try:
            Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.baseline = self.snapshot()
        self.sampled_peak_kb = self.baseline["rss_kb"]
        return self.baseline

    def sample(self) -> None:
        """Take one RSS sample now."""
        now = rss_kb()
        self.sampled_peak_kb = max(self.sampled_peak_kb, now)
        self.sampled_lifetime_peak_kb = max(self.sampled_lifetime_peak_kb, now)

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    def report(self) -> dict[str, Any]:
        """Everything measured since the start and since the last mark."""
        self.sample()
        return {
            "ready": self.ready,
            "baseline": self.baseline,
            "now": self.snapshot(),
            "sampled_peak_kb": self.sampled_peak_kb,
            "sampled_lifetime_peak_kb": self.sampled_lifetime_peak_kb,
            "hwm_reset": self.hwm_reset,
        }


def _reply(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def _commands(agent: ScriptedAgent, memory: Memory) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while line := (await reader.readline()).decode().strip():
            if line == "mark":
                agent.max_running = agent.running
                _reply({"marked": memory.mark()})
            elif line == "report":
                _reply({**memory.report(), "runs": agent.runs, "max_running": agent.max_running})
            elif line == "exit":
                return
            else:
                _reply({"error": f"unknown command {line!r}"})
    finally:
        transport.close()


async def serve_worker(
    settings: Settings, *, concurrency: int, hold_s: float, max_seconds: float
) -> None:
    """One worker process with the scripted agent, until ``exit``/EOF/SIGTERM/the limit."""
    redactor = Redactor()
    configure_logging(settings.log_level, settings.log_format, redactor)
    agent = ScriptedAgent(hold_s=hold_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    registry = ProviderRegistry()
    registry.register(agent)
    async with open_container(settings, redactor=redactor, registry=registry) as container:
        worker = container.worker(f"bench-worker:{os.getpid()}", concurrency=concurrency)
        memory = Memory()
        running = asyncio.create_task(worker.run(stop), name="bench-worker")
        sampling = asyncio.create_task(memory.run(), name="rss-sampler")
        commands = asyncio.create_task(_commands(agent, memory), name="commands")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        _reply({"ready": True, "pid": os.getpid(), **memory.ready})
        try:
            await asyncio.wait(
                {commands, stopper, running},
                timeout=max_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stop.set()
            for task in (commands, stopper):
                task.cancel()
            await asyncio.gather(commands, stopper, return_exceptions=True)
            await asyncio.wait_for(running, settings.shutdown_grace_s + 20)
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
            loop.remove_signal_handler(signal.SIGTERM)


def main() -> None:
    """Parse the arguments and run the worker."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--hold-s", type=float, default=0.0)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    settings = Settings(
        data_dir=args.data_dir,
        database_url=args.database_url,
        log_level="error",
        shutdown_grace_s=10.0,
    )
    asyncio.run(
        serve_worker(
            settings,
            concurrency=args.concurrency,
            hold_s=args.hold_s,
            max_seconds=args.max_seconds,
        )
    )


if __name__ == "__main__":
    main()
