"""Event streaming at scale, and the CLI's start-up: figures, the old path beside the new,
asserting nothing.

Run from the repository root::

    .venv/bin/python -m bench.events [--cells 10x1,100x10,1000x50] [--backends sqlite,postgres]
        [--rate 200] [--seconds 5] [--baseline REV] [--cli-rounds 10] [--skip-streams]
        [--skip-cli]

**Streams.** For each backend and each cell ``WxB`` (W watchers spread over B running
builds), one API process (``bench._events_server``: ``forgeline serve --workers 0`` as it
runs, uvicorn's own loop) with W raw SSE streams open from another process
(``bench._events_watchers``), and each figure for this tree (``new``) and for the source of
``--baseline`` (default: the commit this branch started from, the old polling path):

- *idle CPU*: the API process's CPU time over ``--seconds`` with no event flowing, in cores;
- *memory per watcher*: the API process's RSS with the streams open minus without, / W;
- *another request*: ``GET /tasks/{id}`` (one database read), 100 in a row, median and
  p99 in ms, with no stream open, with the W streams idle, and while events flow;
- *append-to-receipt*: with builds emitting ``--rate`` events per second in total for
  ``--seconds`` (on SQLite in the API process, the only writer SQLite admits; on
  PostgreSQL from another process, as a worker elsewhere writes), the time from the start
  of each append to its arrival, at every watcher: p50, p99, max; every stream checked
  dense and complete (``wrong`` counts events missing, doubled or out of order).

**CLI.** ``forgeline agent run --json`` (a new Python process, its sandbox, the pinned
``claude``) against bare ``claude -p`` on the same scripted conversation, paired and
alternated, ``--cli-rounds`` rounds, medians and ratio; the baseline tree's ``agent run``
in the same rounds; and ``forgeline --version`` for both trees. Both trees and the
environment are byte-compiled first, as installed (see :func:`compiled`).

PostgreSQL: a fresh database on ``FORGELINE_TEST_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``) per run, dropped afterwards. Progress goes
to stderr, the tables to stdout. On a small shared machine the figures are noisy: read
the ratios, and run it again before believing a small difference.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import psycopg
from tests.conftest import free_port
from tests.support.anthropic_server import AnthropicServer, hello_script

from bench.claude_overhead import CLAUDE, PROMPT, fresh_repo, run_bare

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("FORGELINE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def log(message: str) -> None:
    """Progress, on stderr."""
    print(message, file=sys.stderr, flush=True)


# --- processes ---------------------------------------------------------------------------


class Child:
    """A child process spoken to in JSON lines over stdin and stdout."""

    def __init__(self, argv: list[str], env: dict[str, str], logfile: Path) -> None:
        self._log = logfile
        with logfile.open("w") as err:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    @property
    def pid(self) -> int:
        """Its pid."""
        return self.proc.pid

    def read(self) -> dict[str, Any]:
        """Its next JSON line (lines of its logs are passed over)."""
        assert self.proc.stdout is not None
        while line := self.proc.stdout.readline():
            if line.startswith("{"):  # not a log line
                answer: dict[str, Any] = json.loads(line)
                return answer
        raise RuntimeError(f"{self.proc.args[2]} ended: {self._log.read_text()[-2000:]}")

    def send(self, command: str) -> None:
        """One command line."""
        stdin: TextIO | None = self.proc.stdin
        assert stdin is not None
        stdin.write(command + "\n")
        stdin.flush()

    def ask(self, command: str) -> dict[str, Any]:
        """A command and its answer."""
        self.send(command)
        return self.read()

    def close(self) -> None:
        """End of input, then a bounded wait; killed if it does not go."""
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def env_for(tree: Path, **settings: str) -> dict[str, str]:
    """This environment without FORGELINE_*, the code of ``tree`` first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")}
    env.update({f"FORGELINE_{k.upper()}": v for k, v in settings.items()})
    env["PYTHONPATH"] = str(tree)
    env["FORGELINE_LOG_LEVEL"] = "warning"
    return env


def cpu_s(pid: int) -> float:
    """CPU time of ``pid`` (all its threads) so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid``, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def probe(client: httpx.Client, task: str, n: int = 100) -> tuple[float, float]:
    """Median and p99 (ms) of ``n`` ``GET /tasks/{task}`` in a row."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.get(f"/tasks/{task}").raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


@contextlib.contextmanager
def database(backend: str, tmp: Path) -> Iterator[str]:
    """A fresh database URL of ``backend``."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'forgeline.db'}"
        return
    name = f"forgeline_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


# --- one run -------------------------------------------------------------------------------


@dataclass
class Row:
    """The figures of one run."""

    backend: str
    watchers: int
    builds: int
    tree: str
    idle_cores: float
    kib_per_watcher: float
    other_none: tuple[float, float]
    other_idle: tuple[float, float]
    other_busy: tuple[float, float]
    busy_cores: float
    stream: dict[str, Any]


def run(  # noqa: PLR0917 - one run's coordinates
    backend: str, tree_name: str, tree: Path, watchers: int, builds: int, args: Any
) -> Row:
    """One API process with ``watchers`` streams over ``builds`` builds (see the module doc)."""
    with tempfile.TemporaryDirectory() as tmp_name, database(backend, Path(tmp_name)) as url:
        tmp = Path(tmp_name)
        port = free_port()
        env = env_for(tree, data_dir=str(tmp / "data"), database_url=url)
        server = Child(
            [sys.executable, "-m", "bench._events_server", "--port", str(port)],
            env,
            tmp / "server.log",
        )
        emitter: Child | None = None
        watching: Child | None = None
        try:
            hello = server.read()
            assert hello["forgeline"].startswith(str(tree)), hello  # the tree we meant
            tasks = server.ask(f"tasks {builds}")["tasks"]
            if backend == "postgres":
                argv = [sys.executable, "-m", "bench._events_server", "--emit", url, *tasks]
                emitter = Child(argv, env, tmp / "emitter.log")
                emitter.read()
            writer = emitter or server
            client = httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {hello['token']}"},
                timeout=60,
            )
            with client:
                probe(client, tasks[0], 20)  # warm
                time.sleep(1.0)
                other_none = probe(client, tasks[0])
                rss_before = rss_kib(server.pid)
                argv = [sys.executable, "-m", "bench._events_watchers", str(port)]
                watching = Child(
                    [*argv, hello["token"], str(watchers), *tasks],
                    env_for(tree),
                    tmp / "watchers.log",
                )
                watching.read()  # every stream open
                time.sleep(2.0)
                kib = (rss_kib(server.pid) - rss_before) / watchers
                start_cpu, start = cpu_s(server.pid), time.monotonic()
                time.sleep(args.seconds)
                idle_cores = (cpu_s(server.pid) - start_cpu) / (time.monotonic() - start)
                other_idle = probe(client, tasks[0])
                start_cpu, start = cpu_s(server.pid), time.monotonic()
                writer.send(f"emit {args.rate} {args.seconds}")
                other_busy = probe(client, tasks[0])
                writer.read()
                busy_cores = (cpu_s(server.pid) - start_cpu) / (time.monotonic() - start)
                writer.ask("finish")
                stream = watching.ask("report")
            return Row(
                backend,
                watchers,
                builds,
                tree_name,
                idle_cores,
                kib,
                other_none,
                other_idle,
                other_busy,
                busy_cores,
                stream,
            )
        finally:
            for child in (watching, emitter, server):
                if child is not None:
                    child.close()


def table(rows: list[Row]) -> None:
    """The stream figures, and new/old ratios."""
    print(
        f"{'backend':8} {'W':>5} {'B':>3} {'tree':4} {'idle cores':>10} {'KiB/watcher':>11}"
        f" {'p50 ms':>7} {'p99 ms':>8} {'max ms':>8} {'events':>7} {'wrong':>5} {'drops':>5}"
        f" {'refused':>7}"
        f" {'busy cores':>10}  other request p50/p99 ms: none | idle | busy"
    )
    for r in rows:
        s = r.stream
        other = " | ".join(
            f"{a:.1f}/{b:.1f}" for a, b in (r.other_none, r.other_idle, r.other_busy)
        )
        print(
            f"{r.backend:8} {r.watchers:>5} {r.builds:>3} {r.tree:4} {r.idle_cores:>10.3f}"
            f" {r.kib_per_watcher:>11.1f} {s['p50_ms']:>7.1f} {s['p99_ms']:>8.1f}"
            f" {s['max_ms']:>8.1f} {s['events']:>7} {s['wrong']:>5} {s['drops']:>5}"
            f" {s.get('refused', 0):>7}"
            f" {r.busy_cores:>10.3f}  {other}"
        )
    print("\nnew / old:")
    for new in (r for r in rows if r.tree == "new"):
        old = next(
            (
                r
                for r in rows
                if r.tree == "old"
                and (r.backend, r.watchers, r.builds) == (new.backend, new.watchers, new.builds)
            ),
            None,
        )
        if old is None:
            continue
        figures = [
            f"idle CPU {ratio(new.idle_cores, old.idle_cores)}",
            f"p99 {ratio(new.stream['p99_ms'], old.stream['p99_ms'])}",
            f"memory/watcher {ratio(new.kib_per_watcher, old.kib_per_watcher)}",
            f"other request p50 (idle) {ratio(new.other_idle[0], old.other_idle[0])}",
            f"(busy) {ratio(new.other_busy[0], old.other_busy[0])}",
            (
                f"other request idle/none: new {new.other_idle[0] / new.other_none[0]:.2f}x,"
                f" old {old.other_idle[0] / old.other_none[0]:.2f}x"
            ),
        ]
        print(f"  {new.backend:8} {new.watchers:>5}x{new.builds:<3} " + ", ".join(figures))


def ratio(new: float, old: float) -> str:
    """``new / old`` as a factor."""
    return f"{new / old:.3f}x" if old > 0 else "n/a"


# --- the CLI ---------------------------------------------------------------------------------


def agent_run(tree: Path, base: Path, api: AnthropicServer, name: str) -> float:
    """One ``forgeline agent run --json`` of ``tree``'s code: wall seconds."""
    repo = fresh_repo(base, name)
    env = env_for(tree, claude_bin=str(CLAUDE), data_dir=str(base / f"data-{tree.name}"))
    env.update({"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "sk-test"})
    argv = [sys.executable, "-m", "forgeline", "agent", "run", "--prompt", PROMPT]
    start = time.perf_counter()
    proc = subprocess.run(
        [*argv, "--workdir", str(repo), "--json"], env=env, capture_output=True, check=False
    )
    wall = time.perf_counter() - start
    last = json.loads(proc.stdout.splitlines()[-1])
    assert proc.returncode == 0, proc.stderr
    assert last["data"]["status"] == "succeeded", proc.stdout
    return wall


def version_s(tree: Path) -> float:
    """Wall seconds of ``python -m forgeline --version`` on ``tree``'s code."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "forgeline", "--version"],
        env=env_for(tree),
        capture_output=True,
        check=True,
    )
    return time.perf_counter() - start


def compiled(trees: dict[str, Path]) -> None:
    """Byte-compile the trees and the environment's packages, as an installed forgeline
    runs: pip and uv compile at install, and Python caches what it compiles, unless told
    not to (``PYTHONDONTWRITEBYTECODE``, as some shells and CI runners are); compiling
    every module afresh in each run would be timed as the CLI's own start-up."""
    for path in [*trees.values(), Path(sysconfig.get_paths()["purelib"])]:
        compileall.compile_dir(path, quiet=1, workers=0)


def cli(rounds: int, trees: dict[str, Path]) -> None:
    """``agent run`` against bare ``claude -p``, paired; ``--version``."""
    compiled(trees)
    with tempfile.TemporaryDirectory() as tmp_name, AnthropicServer(hello_script) as api:
        base = Path(tmp_name)
        for name, tree in trees.items():  # untimed: warm caches, agent state dirs
            agent_run(tree, base, api, f"warm-{name}")
        run_bare(base, api, -1)
        walls: dict[str, list[float]] = {name: [] for name in [*trees, "bare"]}
        for i in range(rounds):
            for name, tree in trees.items():
                walls[name].append(agent_run(tree, base, api, f"{name}-{i}"))
            walls["bare"].append(run_bare(base, api, i))
            log(
                f"cli round {i + 1}/{rounds}: "
                + ", ".join(f"{k} {v[-1]:.3f}" for k, v in walls.items())
            )
    bare = statistics.median(walls["bare"])
    print(f"\nforgeline agent run vs bare claude -p, {rounds} paired rounds, median wall:")
    print(f"  bare claude -p       {bare:.3f} s")
    for name in trees:
        median = statistics.median(walls[name])
        print(f"  agent run ({name})      {median:.3f} s  = {median / bare:.3f}x bare")
    print("forgeline --version, median of 10:")
    for name, tree in trees.items():
        print(f"  {name}  {statistics.median(version_s(tree) for _ in range(10)):.3f} s")


# --- main ------------------------------------------------------------------------------------


def export(rev: str, into: Path) -> Path:
    """The ``src`` tree of ``rev``, unpacked under ``into``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "src"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def main() -> None:
    """Parse the options, run what was asked, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cells", default="10x1,100x10,1000x50")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--baseline", default=None, help="default: merge-base with main")
    parser.add_argument("--cli-rounds", type=int, default=10)
    parser.add_argument("--skip-streams", action="store_true")
    parser.add_argument("--skip-cli", action="store_true")
    args = parser.parse_args()
    rev = (
        args.baseline
        or subprocess.run(
            ["git", "merge-base", "HEAD", "main"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    with tempfile.TemporaryDirectory() as old_dir:
        trees = {"new": ROOT / "src", "old": export(rev, Path(old_dir))}
        print(f"old = {rev[:12]} (its polling path), new = this tree; {os.cpu_count()} cores")
        if not args.skip_streams:
            rows = []
            for backend in args.backends.split(","):
                for cell in args.cells.split(","):
                    watchers, builds = (int(x) for x in cell.split("x"))
                    for name, tree in trees.items():
                        log(f"{backend} {watchers} watchers over {builds} builds, {name} …")
                        rows.append(run(backend, name, tree, watchers, builds, args))
                        log(f"  {rows[-1]}")
            print(f"\nstreams: {args.rate:g} events/s in total while busy, {args.seconds:g} s each")
            table(rows)
        if not args.skip_cli:
            cli(args.cli_rounds, trees)


if __name__ == "__main__":
    main()
