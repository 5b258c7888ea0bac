"""What the git layer costs a build: each step of GitCli against plain git doing the same.

A repository of ``--files`` files (about ``--kib`` KiB each, a few commits of history) sits
in a bare repository on disk (the embedded remote) and behind a smart-HTTP server with
basic auth (an https-like remote with a token). For each, the benchmark times:

- fresh checkout (GitCli.prepare_checkout into an empty directory) vs ``git clone``;
- cached checkout after the remote moved and the last build left junk, vs ``git fetch`` +
  ``git reset --hard`` + ``git clean -ffdx``;
- has_changes, commit (one changed file) and push, vs ``git status`` / ``git commit -a`` /
  ``git push``.

The extra cost is the price of the safety steps (stale locks, config neutralizing, the
pinned repository, plumbing commits). Run: ``.venv/bin/python -m bench.git_bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import structlog
from tests.support.git_http import GitHttpServer
from tests.support.local_run import LocalRun

from forgeline.adapters.git import GitCli
from forgeline.domain.git import GitAuthor, GitRemote, build_commit_message, task_trailers
from forgeline.domain.secrets import Secret

BOT = GitAuthor("forgeline-bot", "bot@forgeline.test")
TOKEN = "bench-token-0123456789"  # noqa: S105 - the bench server's own test token
ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LC_ALL": "C",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Dev",
    "GIT_AUTHOR_EMAIL": "dev@example.test",
    "GIT_COMMITTER_NAME": "Dev",
    "GIT_COMMITTER_EMAIL": "dev@example.test",
}


def git(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Plain git, as a person would run it."""
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**ENV, "HOME": str(cwd), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {args}: {done.stderr}")
    return done.stdout.strip()


def make_repo(root: Path, files: int, kib: int) -> tuple[Path, Path]:
    """A bare repository with ``files`` files over three commits, and a developer clone."""
    bare = root / "served" / "bench.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare), cwd=root)
    dev = root / "dev"
    git("clone", "--quiet", str(bare), str(dev), cwd=root)
    git("checkout", "--quiet", "-B", "main", cwd=dev)
    for commit in range(3):
        for i in range(commit, files, 3):
            path = dev / f"dir{i % 50}" / f"file{i}.txt"
            path.parent.mkdir(exist_ok=True)
            # kib KiB of incompressible text per file, so the pack is realistically large.
            path.write_text(f"{commit}-{i}\n{os.urandom(kib * 512).hex()}\n")
        git("add", "--all", cwd=dev)
        git("commit", "--quiet", "-m", f"commit {commit}", cwd=dev)
    git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=dev)
    return bare, dev


def move_remote(dev: Path, n: str) -> None:
    """Another developer pushes a small change."""
    (dev / f"moved{n}.txt").write_text(f"{n}\n")
    git("add", "--all", cwd=dev)
    git("commit", "--quiet", "-m", f"move {n}", cwd=dev)
    git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=dev)


def leave_junk(workdir: Path) -> None:
    """What a finished build leaves in its checkout."""
    (workdir / "junk").mkdir(exist_ok=True)
    (workdir / "junk" / "a.txt").write_text("junk\n")
    (workdir / "dir0" / "file0.txt").write_text("edited\n")


def plain_refresh(workdir: Path, cfg: list[str], env: dict[str, str]) -> None:
    """Plain git's version of a cached checkout."""
    git(*cfg, "fetch", "--quiet", "origin", cwd=workdir, env=env)
    git("reset", "--quiet", "--hard", "origin/main", cwd=workdir)
    git("clean", "--quiet", "-ffdx", cwd=workdir)


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    """Seconds ``fn`` took."""
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


def timed_sync(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


async def bench_remote(
    label: str, remote: GitRemote, dev: Path, root: Path, rounds: int
) -> list[tuple[str, float, float]]:
    """Median seconds of each step, GitCli vs plain git, for one remote."""
    home = root / "home"
    home.mkdir(exist_ok=True)
    cli = GitCli(LocalRun(), home=str(home))
    auth_env: dict[str, str] = {}
    url = remote.url
    if remote.token is not None:
        # Plain git gets the same token the way people often do it: a credential helper.
        auth_env = {"BENCH_TOKEN": TOKEN}
        helper = "!f() { echo username=bot; echo password=$BENCH_TOKEN; }; f"
        plain_cfg = ["-c", f"credential.helper={helper}"]
    else:
        plain_cfg = []
    results: dict[str, tuple[list[float], list[float]]] = {}

    def record(step: str, ours: float, plain: float) -> None:
        results.setdefault(step, ([], []))
        results[step][0].append(ours)
        results[step][1].append(plain)

    for n in range(rounds):
        ours_dir = root / f"{label}-ours-{n}"
        plain_dir = root / f"{label}-plain-{n}"
        record(
            "fresh checkout",
            await timed(partial(cli.prepare_checkout, "bench", remote, "main", str(ours_dir))),
            timed_sync(partial(git, *plain_cfg, "clone", "-q", url, str(plain_dir), cwd=root,
                               env=auth_env)),
        )  # fmt: skip
        move_remote(dev, f"{label}-{n}")
        leave_junk(ours_dir)
        leave_junk(plain_dir)
        record(
            "cached checkout",
            await timed(partial(cli.prepare_checkout, "bench", remote, "main", str(ours_dir))),
            timed_sync(partial(plain_refresh, plain_dir, plain_cfg, auth_env)),
        )
        for d in (ours_dir, plain_dir):
            (d / "dir1" / "file1.txt").write_text(f"build {n}\n")
        record(
            "has_changes",
            await timed(partial(cli.has_changes, str(ours_dir))),
            timed_sync(partial(git, "status", "--porcelain", cwd=plain_dir)),
        )
        message = build_commit_message(f"Round {n}: change one file")
        record(
            "commit",
            await timed(partial(cli.commit, str(ours_dir), message, BOT, task_trailers(f"t{n}"))),
            timed_sync(partial(git, "commit", "--quiet", "-am", message, cwd=plain_dir)),
        )
        ref = f"forgeline/{label}-{n}"
        record(
            "push (review branch)",
            await timed(partial(cli.push, str(ours_dir), remote, f"{ref}-ours")),
            timed_sync(partial(git, *plain_cfg, "push", "-q", "origin", f"HEAD:refs/heads/{ref}",
                               cwd=plain_dir, env=auth_env)),
        )  # fmt: skip
        shutil.rmtree(ours_dir)
        shutil.rmtree(plain_dir)
    return [
        (step, statistics.median(ours), statistics.median(plain))
        for step, (ours, plain) in results.items()
    ]


async def main() -> None:
    """Build the repository, run every remote, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--kib", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="forgeline-git-bench-") as tmp:
        root = Path(tmp)
        bare, dev = make_repo(root, args.files, args.kib)
        size = sum(f.stat().st_size for f in bare.rglob("*") if f.is_file()) / 1e6
        print(
            f"repository: {args.files} files x ~{args.kib} KiB, 3 commits, "
            f"{size:.1f} MB packed; median of {args.rounds} rounds"
        )
        with GitHttpServer(root / "served", username="bot", token=TOKEN) as server:
            remotes = [
                ("path", GitRemote(str(bare))),
                ("http+token", GitRemote(server.url("bench.git"), Secret(TOKEN), "bot")),
            ]
            print(f"{'remote':<11} {'step':<22} {'GitCli':>9} {'plain git':>10} {'ratio':>6}")
            for label, remote in remotes:
                rows = await bench_remote(label, remote, dev, root, args.rounds)
                cached = rows[1:]  # every step of a build on a reused checkout
                ours_total = sum(ours for _, ours, _ in cached)
                plain_total = sum(plain for _, _, plain in cached)
                rows.append(("build total (cached)", ours_total, plain_total))
                for step, ours, plain in rows:
                    print(
                        f"{label:<11} {step:<22} {ours * 1000:>7.0f}ms {plain * 1000:>8.0f}ms "
                        f"{ours / plain:>6.2f}"
                    )


if __name__ == "__main__":
    asyncio.run(main())
