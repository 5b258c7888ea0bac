"""What the bubblewrap sandbox costs a build. Prints figures, asserts none.

1. **Start-up.** Paired runs, alternated (which of the pair goes first alternates too):
   a) a bare ``true`` through ``BubblewrapWorkspace.run`` against ``LocalWorkspace.run``:
      the sandbox's own cost (namespaces, mounts, and as root the uid drop);
   b) the same scripted Claude Code run (Write ``hello.txt``, then "done") through
      ``ClaudeCodeAgent.execute`` on each workspace, in a fresh checkout of ``--files``
      files (as root the checkout and state are handed to the sandbox uid and back: that
      walk is included).
   Medians of each side and the median of the paired differences (goal: ≤ 50 ms).
2. **Memory per concurrent build** (proportional set size, so shared pages count once).
   The sandbox's own processes (``bwrap``: the plumbing, not the agent) while ``--builds``
   runs sleep in sandboxes side by side; and for OpenCode, which now runs a sandboxed
   ``opencode serve`` per build, the peak memory of each build's whole sandbox (server,
   tools) with 1 and ``--builds`` builds at once.

Run from the repository root (the pinned CLIs come from ``scripts/setup-tools``)::

    .venv/bin/python -m bench.sandbox [--runs 21] [--files 2000] [--builds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the scripted model servers live in the test support

from tests.support.anthropic_server import AnthropicServer, hello_script  # noqa: E402
from tests.support.openai_server import ScriptedOpenAI  # noqa: E402

from forgeline.adapters.agents.claude_code import ClaudeCodeAgent  # noqa: E402
from forgeline.adapters.agents.opencode import OpenCodeAgent  # noqa: E402
from forgeline.adapters.agents.opencode.server import ServerPerRun  # noqa: E402
from forgeline.adapters.workspace.local import LocalWorkspace  # noqa: E402
from forgeline.adapters.workspace.proctree import descendants, process_name  # noqa: E402
from forgeline.adapters.workspace.sandbox import BubblewrapWorkspace  # noqa: E402
from forgeline.domain.agent import AgentRequest, RunStatus  # noqa: E402
from forgeline.logs import Redactor, configure_logging  # noqa: E402
from forgeline.ports.workspace import Workspace  # noqa: E402

CLAUDE = Path(os.environ.get("FORGELINE_CLAUDE_BIN", ROOT / "tools/node_modules/.bin/claude"))
OPENCODE = Path(os.environ.get("FORGELINE_OPENCODE_BIN", ROOT / "tools/node_modules/.bin/opencode"))
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


def checkout(base: Path, name: str, files: int) -> Path:
    """A git repository of ``files`` small files in 20 directories, committed."""
    path = base / name
    for i in range(files):
        target = path / f"d{i % 20}" / f"f{i}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{i}\n")
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True)
    subprocess.run(
        ["git", "-C", str(path), "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "i"],
        check=True,
    )
    return path


async def paired(
    runs: int, local: Callable[[int], Awaitable[float]], boxed: Callable[[int], Awaitable[float]]
) -> tuple[list[float], list[float]]:
    """``runs`` pairs, the order within a pair alternating; seconds of each side."""
    plain: list[float] = []
    sandboxed: list[float] = []
    for n in range(runs):
        if n % 2:
            sandboxed.append(await boxed(n))
            plain.append(await local(n))
        else:
            plain.append(await local(n))
            sandboxed.append(await boxed(n))
    return plain, sandboxed


def report(title: str, plain: list[float], sandboxed: list[float]) -> None:
    """Medians, the median paired difference and the ratio of medians."""
    diffs = [b - a for a, b in zip(plain, sandboxed, strict=True)]
    mp, ms = statistics.median(plain), statistics.median(sandboxed)
    print(f"{title} ({len(plain)} pairs):")
    print(f"  unsandboxed  median {mp * 1000:8.1f} ms  (min {min(plain) * 1000:.1f})")
    print(f"  sandboxed    median {ms * 1000:8.1f} ms  (min {min(sandboxed) * 1000:.1f})")
    print(
        f"  added: median of paired differences {statistics.median(diffs) * 1000:+.1f} ms"
        f"  (goal ≤ 50 ms); ratio of medians {ms / mp:.3f}"
    )


async def bare_true(runs: int) -> None:
    """1a: the sandbox around a command that does nothing."""
    local, sandbox = LocalWorkspace(), BubblewrapWorkspace()

    def timed(ws: Workspace) -> Callable[[int], Awaitable[float]]:
        async def one(_n: int) -> float:
            started = time.perf_counter()
            result = await ws.run(["true"], cwd="/", env=ENV, timeout_s=30)
            assert result.ok, result.stderr
            return time.perf_counter() - started

        return one

    report("1a. `true`, workspace.run", *await paired(runs, timed(local), timed(sandbox)))


async def claude_runs(runs: int, files: int, tmp: Path) -> None:
    """1b: one scripted Claude Code run per side, each in a fresh checkout."""
    with AnthropicServer(hello_script) as api:
        environ = {**ENV, "ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "sk-bench"}

        def agent(ws: Workspace, as_root: bool) -> ClaudeCodeAgent:
            return ClaudeCodeAgent(
                workspace=ws,
                state_dir=str(tmp / "state"),
                binary=str(CLAUDE),
                environ=environ,
                max_retries=0,
                runs_as_root=as_root,
            )

        def timed(side: str, cli: ClaudeCodeAgent) -> Callable[[int], Awaitable[float]]:
            async def one(n: int) -> float:
                repo = await asyncio.to_thread(checkout, tmp, f"{side}-{n}", files)
                request = AgentRequest(prompt="create hello.txt", workdir=str(repo), state_key=side)
                started = time.perf_counter()
                events = [e async for e in cli.execute(request)]
                elapsed = time.perf_counter() - started
                result = events[-1].data
                assert getattr(result, "status", None) is RunStatus.SUCCEEDED, events[-3:]
                return elapsed

            return one

        plain = agent(LocalWorkspace(), os.geteuid() == 0)
        boxed = agent(BubblewrapWorkspace(), False)
        await timed("warm", plain)(0)
        await timed("warm-box", boxed)(0)
        report(
            f"1b. scripted Claude Code run, checkout of {files} files",
            *await paired(runs, timed("plain", plain), timed("boxed", boxed)),
        )


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` in KiB (0 once it is gone): its resident memory
    with each shared page split among the processes sharing it, so summing a tree's does
    not count the same pages twice."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:  # noqa: PTH123 - a /proc read
            return next((int(ln.split()[1]) for ln in fh if ln.startswith("Pss:")), 0)
    except OSError:
        return 0


async def plumbing_memory(builds: int, tmp: Path) -> None:
    """2a: what the sandbox's own processes hold per concurrent build."""
    sandbox = BubblewrapWorkspace()
    procs = []
    for i in range(builds):
        work = tmp / f"mem-{i}"
        work.mkdir()
        procs.append(
            await sandbox.spawn(
                ["sleep", "30"], cwd=str(work), env=ENV, line_limit=1024, writable=[str(work)]
            )
        )
    await asyncio.sleep(0.5)
    per_build = []
    for proc in procs:
        assert proc.pid is not None
        tree = [proc.pid, *descendants(proc.pid)]
        per_build.append(sum(pss_kib(p) for p in tree if process_name(p) in {"bwrap", "setpriv"}))
    for proc in procs:
        await proc.kill()
    print(f"2a. sandbox plumbing (bwrap processes), {builds} builds at once:")
    print(
        f"  per build: median {statistics.median(per_build) / 1024:.1f} MiB"
        f" (max {max(per_build) / 1024:.1f} MiB); the agent itself is the same either way"
    )


async def opencode_memory(builds: int, tmp: Path) -> None:
    """2b: each OpenCode build's own sandboxed server, with 1 and ``builds`` at once."""
    llm = ScriptedOpenAI().start()
    try:
        config = json.dumps(llm.opencode_config())
        servers = ServerPerRun(
            binary=str(OPENCODE),
            workspace=BubblewrapWorkspace(),
            state_root=tmp / "oc-state",
            config_content=config,
        )
        agent = OpenCodeAgent(servers=servers, config_content=config)
        print("2b. OpenCode: one sandboxed opencode serve per build, peak memory per build:")
        for k in sorted({1, builds}):
            repos = [await asyncio.to_thread(checkout, tmp, f"oc-{k}-{i}", 10) for i in range(k)]
            peaks: dict[int, int] = {}
            done = asyncio.Event()

            async def sample(peaks: dict[int, int] = peaks, done: asyncio.Event = done) -> None:
                while not done.is_set():
                    for live in list(servers._live):
                        if (pid := live.pid) is not None:
                            total = pss_kib(pid) + sum(pss_kib(p) for p in descendants(pid))
                            peaks[pid] = max(peaks.get(pid, 0), total)
                    await asyncio.sleep(0.05)

            sampler = asyncio.create_task(sample())
            requests = [
                AgentRequest(
                    prompt=f"BASHSLEEP=1:{repo}/slept.txt",
                    workdir=str(repo),
                    provider="opencode",
                    model="fake/fake-model",
                    state_key=f"oc-{k}-{i}",
                )
                for i, repo in enumerate(repos)
            ]

            async def run(request: AgentRequest) -> None:
                events = [e async for e in agent.execute(request)]
                assert getattr(events[-1].data, "status", None) is RunStatus.SUCCEEDED, events[-3:]

            await asyncio.gather(*(run(r) for r in requests))
            done.set()
            await sampler
            values = sorted(peaks.values())
            print(
                f"  {k} at once: median {statistics.median(values) / 1024:.0f} MiB per build,"
                f" {sum(values) / 1024:.0f} MiB in all"
            )
        await agent.aclose()
    finally:
        llm.stop()


async def main() -> None:
    """Every measurement, in order."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--builds", type=int, default=4)
    args = parser.parse_args()
    configure_logging("warning", "console", Redactor())
    print(f"running as uid {os.geteuid()}; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="forgeline-bench-sandbox-") as tmp:
        await bare_true(args.runs)
        await claude_runs(args.runs, args.files, Path(tmp))
        await plumbing_memory(args.builds, Path(tmp))
        await opencode_memory(args.builds, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
