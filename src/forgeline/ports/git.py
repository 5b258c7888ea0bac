"""The Git port: the repository operations a build needs, shaped as the pipeline uses them.

A build prepares a checkout, lets the agent work in it, asks whether anything changed,
commits and pushes. Project creation makes a bare repository (embedded mode) and gives it
a first commit. Nothing here names a git command: an adapter may run git locally, inside a
pod (through the ``Workspace`` port), or talk to a forge's API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from forgeline.domain.git import GitAuthor, GitRemote


@dataclass(frozen=True, slots=True)
class Checkout:
    """A working tree ready for a build.

    ``head`` is the commit the branch points to on the remote, or ``None`` when the
    remote has no such branch yet (an empty repository): the checkout is then an empty
    working tree on an unborn ``branch``, and the first commit will create it.
    """

    workdir: str
    branch: str
    head: str | None

    @property
    def empty(self) -> bool:
        """True when the remote branch did not exist (no commits to start from)."""
        return self.head is None


#: How a pushed ref moved, as git reports it.
PushOutcome = Literal["created", "fast-forward", "forced", "up-to-date"]


@dataclass(frozen=True, slots=True)
class PushResult:
    """A push the remote accepted."""

    ref: str  # the full remote ref, ``refs/heads/<branch>``
    sha: str  # the commit the remote ref now points to
    outcome: PushOutcome


class Git(Protocol):
    """Repository operations of a build, with real timeouts and no leaked secrets.

    Duties of every implementation:

    - Every operation is bounded in time (a local and a network timeout of the adapter);
      one that runs out raises ``GitError``. Cancelling the caller stops the operation and
      leaves no process behind.
    - Failures raise ``GitError`` (a rejected push: ``PushRejectedError`` with the
      remote's reason), ``raise … from`` the underlying error; invalid names or URLs
      raise ``ValidationError`` before anything runs.
    - A remote's token reaches git only through the child environment: never in a URL,
      an argv, a log line, or the text of an error.
    - The operator's git configuration (system, global) has no effect, and neither does
      configuration an agent may have written into the checkout's ``.git`` (hooks,
      ``insteadOf`` rewrites, credential helpers, fsmonitor): they are neutralized before
      forgeline commits or talks to a remote.
    - Paths are absolute paths *where commands run* (the workspace), not necessarily on
      forgeline's own disk.
    """

    async def init_bare(self, path: str, *, default_branch: str = "main") -> None:
        """Create a bare repository at ``path`` whose HEAD names ``default_branch``.

        Idempotent: an existing repository is left as it is.
        """
        ...

    async def create_initial_commit(
        self,
        path: str,
        *,
        branch: str = "main",
        author: GitAuthor,
        message: str = "Initial commit",
    ) -> str:
        """Give the bare repository at ``path`` an empty first commit on ``branch``.

        Returns the commit's sha. If ``branch`` already has commits, nothing is written
        and its current head is returned (safe to retry).
        """
        ...

    async def prepare_checkout(
        self, project: str, remote: GitRemote, branch: str, workdir: str
    ) -> Checkout:
        """Make ``workdir`` an exact, clean copy of ``branch`` of ``remote``.

        ``workdir`` is normally a fresh directory (every attempt of a build has its own),
        cloned into; an existing one is fetched and hard-reset to the remote branch, and
        everything else in it (local commits, modified, untracked and ignored files, stale
        locks of a killed git) is discarded, so a retried call is safe. A remote without the
        branch (an empty repository) gives an empty checkout (``Checkout.head is None``).
        ``project`` names the build in logs and errors.
        """
        ...

    async def has_changes(self, workdir: str) -> bool:
        """True if the working tree differs from the prepared commit (modified, added or
        deleted files; ignored files do not count) or the agent made commits of its own."""
        ...

    async def commit(
        self,
        workdir: str,
        message: str,
        author: GitAuthor,
        trailers: Mapping[str, str] | None = None,
        *,
        allow_empty: bool = False,
    ) -> str:
        """Record the whole working tree as **one** commit on top of the prepared commit.

        Every change is staged (also deletions and new files); commits the agent made on
        its own are folded into this one, so a build yields exactly one commit, by
        ``author``, whose message is ``message`` followed by ``trailers`` as git trailers.
        Hooks do not run. Returns the new commit's sha; ``GitError`` when there is nothing
        to commit, unless ``allow_empty``.
        """
        ...

    async def push(
        self, workdir: str, remote: GitRemote, branch: str, *, force: bool = False
    ) -> PushResult:
        """Push the checkout's HEAD to ``refs/heads/<branch>`` of ``remote``.

        Without ``force`` only a fast-forward is accepted. A refusal (non-fast-forward, a
        hook that declined, a protected branch) raises ``PushRejectedError`` whose
        ``reason`` is the remote's explanation (with any hook output); authentication and
        connection failures raise ``GitError``.
        """
        ...

    async def remove_checkout(self, workdir: str) -> None:
        """Delete the checkout and everything in it (an attempt's directory is never used
        again), also what an agent made read-only. A missing one is fine."""
        ...

    async def find_task_commit(self, workdir: str, task_id: str) -> str | None:
        """The newest commit of the prepared branch whose ``Forgeline-Task`` trailer is
        ``task_id``, or ``None`` — so a retried build can tell that an earlier attempt
        already pushed its work."""
        ...

    async def commit_patch(self, remote: GitRemote, sha: str, scratch: str) -> str:
        """The patch commit ``sha`` of ``remote`` made: a unified diff against its first
        parent (against nothing for a root commit), renames detected, binary files named
        only.

        Read from the remote itself, never from a checkout an agent worked in: a
        repository on this disk (a path remote) is read in place, any other is fetched
        (that commit and its parent, nothing more) into ``scratch``, an absolute path that
        must not exist yet and is removed again. ``ValidationError`` for a ``sha`` that is
        not a full hex commit id; ``GitError`` when the remote has no such commit.
        """
        ...
