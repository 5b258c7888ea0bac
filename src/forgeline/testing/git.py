"""A fake :class:`~forgeline.ports.git.Git` over an in-memory remote.

The remote is a dict of branches, each a list of commits (the newest last); a checkout is
a real directory (the agent writes files into it), and "has changes" means that a file
appeared in it. Enough for the worker's pipeline and its failure policy, in microseconds;
the real behaviour (hooks, trailers, force pushes) is the GitCli adapter's, tested with
real git in the integration tier.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from forgeline.domain.errors import GitError, PushRejectedError
from forgeline.domain.git import GitAuthor, GitRemote
from forgeline.ports.git import Checkout, PushResult


@dataclass(frozen=True, slots=True)
class FakeCommit:
    """A commit of the fake remote."""

    sha: str
    message: str
    trailers: Mapping[str, str] = field(default_factory=dict)


class FakeGit:
    """Records what a build asked of git; ``fail_checkout`` makes the next checkouts raise
    it (a fetch that failed: an accident of the infrastructure); ``reject_push`` makes
    pushes raise it (the remote said no: an answer); ``after_checkout`` is awaited when a
    checkout is ready (a test acting between two steps)."""

    def __init__(self) -> None:
        #: The remote's branches, by name.
        self.branches: dict[str, list[FakeCommit]] = {}
        #: Commits made in each checkout, not pushed yet.
        self.local: dict[str, FakeCommit] = {}
        #: Every push, as (branch, sha, force).
        self.pushes: list[tuple[str, str, bool]] = []
        self.fail_checkout: GitError | None = None
        self.reject_push: PushRejectedError | None = None
        self.after_checkout: Callable[[], Awaitable[None]] | None = None
        self._made = 0

    def _next_sha(self) -> str:
        self._made += 1
        return f"{self._made:040x}"

    async def init_bare(self, path: str, *, default_branch: str = "main") -> None:
        """Nothing to make: the remote is in memory."""

    async def create_initial_commit(
        self, path: str, *, branch: str = "main", author: GitAuthor, message: str = "Initial commit"
    ) -> str:
        """A first commit on ``branch``, or its head if it has one."""
        commits = self.branches.setdefault(branch, [])
        if not commits:
            commits.append(FakeCommit(self._next_sha(), message))
        return commits[-1].sha

    async def prepare_checkout(
        self, project: str, remote: GitRemote, branch: str, workdir: str
    ) -> Checkout:
        """An empty directory standing for the branch's head."""
        if self.fail_checkout is not None:
            raise self.fail_checkout
        await asyncio.to_thread(Path(workdir).mkdir, parents=True, exist_ok=True)
        commits = self.branches.get(branch) or []
        if self.after_checkout is not None:
            await self.after_checkout()
        return Checkout(workdir, branch, commits[-1].sha if commits else None)

    async def has_changes(self, workdir: str) -> bool:
        """True once anything was written into the checkout."""
        return bool(await asyncio.to_thread(os.listdir, workdir))

    async def commit(
        self,
        workdir: str,
        message: str,
        author: GitAuthor,
        trailers: Mapping[str, str] | None = None,
        *,
        allow_empty: bool = False,
    ) -> str:
        """A new local commit of the checkout."""
        if not allow_empty and not await self.has_changes(workdir):
            raise GitError("nothing to commit")
        made = FakeCommit(self._next_sha(), message, dict(trailers or {}))
        self.local[workdir] = made
        return made.sha

    async def push(
        self, workdir: str, remote: GitRemote, branch: str, *, force: bool = False
    ) -> PushResult:
        """The checkout's commit becomes the branch's head."""
        if self.reject_push is not None:
            raise self.reject_push
        made = self.local.pop(workdir)
        self.branches.setdefault(branch, []).append(made)
        self.pushes.append((branch, made.sha, force))
        return PushResult(f"refs/heads/{branch}", made.sha, "fast-forward")

    async def remove_checkout(self, workdir: str) -> None:
        """Delete the checkout's directory."""
        self.local.pop(workdir, None)
        shutil.rmtree(workdir, ignore_errors=True)

    async def find_task_commit(self, workdir: str, task_id: str) -> str | None:
        """The newest pushed commit of any branch carrying ``task_id``'s trailer."""
        for commits in self.branches.values():
            for made in reversed(commits):
                if made.trailers.get("Forgeline-Task") == task_id:
                    return made.sha
        return None

    async def commit_patch(self, remote: GitRemote, sha: str, scratch: str) -> str:
        """No patches in memory: the diff route is tested with real git."""
        raise GitError("the fake remote keeps no patches")
