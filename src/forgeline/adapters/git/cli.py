"""The git adapter: real ``git`` run through the ``Workspace`` port.

Running through the workspace means the same code works on forgeline's own disk and inside
a Kubernetes pod next to the agent. Three hazards shape this module:

**Secrets.** A remote's token reaches git only as an environment variable read by an inline
credential helper (``-c credential.<scheme://host>.helper=!f() { … }``): the helper's
*text* is in argv, the token is not; git never puts a password into a URL it prints; and
the helper is bound to the remote's host, so a redirect elsewhere gets no token. Error
text is masked anyway (:func:`~forgeline.adapters.git.output.excerpt`).

**Foreign configuration.** The operator's ``~/.gitconfig`` and ``/etc/gitconfig`` are
switched off (``GIT_CONFIG_GLOBAL=/dev/null``, ``GIT_CONFIG_NOSYSTEM=1``), and so is what an
agent could plant in the checkout it just worked in: hooks (``core.hooksPath=/dev/null``),
an fsmonitor command, ``url.*.insteadOf`` rewrites that would send our token elsewhere.
Before every commit and network operation the checkout's ``.git/config`` is cut down to an
allow-list, and commands name the repository explicitly (``GIT_DIR``/``GIT_WORK_TREE``)
so a deleted ``.git`` can never make git find an enclosing repository instead.

**Time.** Every command has a timeout (local or network); the workspace kills a command
that outlives it, and an ``asyncio`` deadline a little later stops waiting even if the
workspace failed to.
"""

from __future__ import annotations

import asyncio
import posixpath
import re
import time
from collections.abc import Mapping, Sequence
from typing import Final, TypedDict

import structlog

from forgeline.adapters.git.output import (
    excerpt,
    parse_push_porcelain,
    remote_messages,
    split_nul,
)
from forgeline.domain.errors import GitError, PushRejectedError, ValidationError, WorkspaceError
from forgeline.domain.git import (
    TASK_TRAILER,
    GitAuthor,
    GitRemote,
    RemoteKind,
    validate_branch_name,
    with_trailers,
)
from forgeline.logs import Redactor
from forgeline.ports.git import Checkout, Git, PushResult
from forgeline.ports.workspace import CommandResult, Workspace

log = structlog.get_logger(__name__)

#: PATH of git's environment unless the composition root passes another.
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: ssh never asks a question (no terminal to answer it) and learns a new host's key once.
DEFAULT_SSH_COMMAND: Final = (
    "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o ConnectTimeout=30"
)
#: Local commands (status, add, commit of a large tree on a slow disk).
DEFAULT_TIMEOUT_S: Final = 120.0
#: Clone, fetch and push of a large repository over a slow link.
DEFAULT_NETWORK_TIMEOUT_S: Final = 600.0
#: The asyncio deadline sits this much after the workspace's own, as a backstop.
_BACKSTOP_S: Final = 15.0

#: A full commit id (SHA-1 or SHA-256 object format).
_FULL_SHA: Final = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")

#: Where :meth:`GitCli.prepare_checkout` records the commit a build starts from.
BASE_REF: Final = "refs/forgeline/base"

# Environment variables that carry a remote's credentials to the helper below.
_USER_VAR: Final = "FORGELINE_GIT_USERNAME"
_TOKEN_VAR: Final = "FORGELINE_GIT_TOKEN"  # noqa: S105 - the variable's name, not a value
# Answers only "get"; "store"/"erase" are no-ops. printf, not echo: a token may start with -n.
_CREDENTIAL_HELPER: Final = (
    '!f() { test "$1" = get || return 0; '
    f'printf \'username=%s\\npassword=%s\\n\' "${_USER_VAR}" "${_TOKEN_VAR}"; }}; f'
)

# Passed with -c to every command; command-line configuration beats any file.
_BASE_CONFIG: Final = (
    "core.hooksPath=/dev/null",  # no hook (ours or an agent's) ever runs
    "core.fsmonitor=false",  # an fsmonitor is a command git would run
    "core.askPass=",
    # ~/.config/git/ignore and attributes are read even without a global config file:
    # an operator's personal ignores must not drop files from a build's commit.
    "core.excludesFile=/dev/null",
    "core.attributesFile=/dev/null",
    "core.autocrlf=false",
    "core.quotePath=false",
    "credential.helper=",  # an empty value resets the list of helpers
    "commit.gpgSign=false",
    "gc.autoDetach=false",  # a detached gc would outlive the command and its timeout
    "maintenance.autoDetach=false",
    "advice.detachedHead=false",
    "init.defaultBranch=main",
    "http.lowSpeedLimit=1000",  # a stalled transfer fails after a minute, not the full timeout
    "http.lowSpeedTime=60",
)

# What may stay in a checkout's .git/config; everything else is removed before forgeline
# commits or talks to a remote from it.
_ALLOWED_LOCAL_CONFIG: Final = frozenset(
    {
        "core.repositoryformatversion",
        "core.filemode",
        "core.bare",
        "core.logallrefupdates",
        "core.ignorecase",
        "core.precomposeunicode",
        "core.symlinks",
    }
)

# Removed from a cached checkout before it is reused: locks a killed git left behind
# (only one build of a project runs at a time, so they are stale), and per-repository
# ignore and attribute files an agent may have written, which would silently hide files
# from the commits of every later build.
_LEFTOVERS: Final = (
    "index.lock",
    "HEAD.lock",
    "config.lock",
    "shallow.lock",
    "packed-refs.lock",
    "info/exclude",
    "info/attributes",
)


# What git says when the *local* repository is damaged (as opposed to the network or the
# remote failing); a fetch failing with one of these is worth a fresh clone.
_LOCAL_DAMAGE: Final = (
    "is corrupt",
    "is empty",
    "bad object",
    "does not point to a valid object",
    "invalid sha1 pointer",
    "index file",
    "unable to read",
)


class _LocalStateError(GitError):
    """A cached checkout that git cannot bring back (corrupt, locked): start it afresh."""


class GitCli:
    """The :class:`~forgeline.ports.git.Git` port on the ``git`` program.

    Stateless between calls: a checkout's own ``.git`` holds everything (the base commit
    under ``refs/forgeline/base``), so a worker restarted mid-build can carry on.
    """

    def __init__(
        self,
        workspace: Workspace,
        *,
        binary: str = "git",
        path: str = DEFAULT_PATH,
        home: str = "/nonexistent",
        ssh_command: str = DEFAULT_SSH_COMMAND,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        network_timeout_s: float = DEFAULT_NETWORK_TIMEOUT_S,
        extra_env: Mapping[str, str] | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        """``home`` is git's HOME (where ssh finds keys and ``known_hosts``); ``extra_env``
        adds variables such as ``GIT_SSL_CAINFO`` for a forge with a private CA.
        ``redactor`` also masks every secret it knows in error text."""
        self._workspace = workspace
        self._binary = binary
        self._timeout_s = timeout_s
        self._network_timeout_s = network_timeout_s
        self._redactor = redactor
        self._env: dict[str, str] = {
            "PATH": path,
            "HOME": home,
            "LANG": "C",
            "LC_ALL": "C",  # git's messages in English: a few are matched below
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
            # No ext:: (runs commands), no fd::, no git:// (unauthenticated).
            "GIT_ALLOW_PROTOCOL": "file:http:https:ssh",
            "GIT_SSH_COMMAND": ssh_command,
            "GIT_EDITOR": "true",
            # refs/replace/* would let a planted ref change what a commit or tree "is".
            "GIT_NO_REPLACE_OBJECTS": "1",
            **(extra_env or {}),
        }

    # --- bare repositories (embedded remotes) ---------------------------------------------

    async def init_bare(self, path: str, *, default_branch: str = "main") -> None:
        """Create a bare repository whose HEAD names ``default_branch`` (idempotent)."""
        _require_abs(path)
        validate_branch_name(default_branch)
        await self._git(
            ["init", "--quiet", "--bare", f"--initial-branch={default_branch}", "--", path],
            cwd="/",
            op="init --bare",
        )

    async def create_initial_commit(
        self,
        path: str,
        *,
        branch: str = "main",
        author: GitAuthor,
        message: str = "Initial commit",
    ) -> str:
        """An empty first commit on ``branch`` of the bare repository at ``path``."""
        _require_abs(path)
        ref = f"refs/heads/{validate_branch_name(branch)}"
        env = {"GIT_DIR": path}
        existing = await self._resolve(path, ref, env=env)
        if existing:
            return existing
        # Plumbing straight into the bare repository: no scratch checkout, no push.
        tree = await self._git(
            ["hash-object", "-t", "tree", "-w", "--stdin"],
            cwd=path,
            env=env,
            stdin=b"",
            op="hash-object",
        )
        commit = await self._git(
            ["commit-tree", _text(tree.stdout).strip(), "-F", "-"],
            cwd=path,
            env={**env, **_author_env(author)},
            stdin=with_trailers(message, {}).encode(),
            op="commit-tree",
        )
        sha = _text(commit.stdout).strip()
        # An empty old value: create the ref only if it does not exist (a concurrent
        # creator wins, and we return its commit).
        created = await self._git(
            ["update-ref", ref, sha, ""], cwd=path, env=env, op="update-ref", check=False
        )
        if created.ok:
            return sha
        winner = await self._resolve(path, ref, env=env)
        if winner:
            return winner
        raise GitError(f"could not create {ref} in {path}: {self._excerpt(created.stderr)}")

    # --- checkouts -----------------------------------------------------------------------

    async def prepare_checkout(
        self, project: str, remote: GitRemote, branch: str, workdir: str
    ) -> Checkout:
        """Clone into ``workdir``, or fetch and reset the cached checkout there."""
        validate_branch_name(branch)
        _require_checkout_dir(workdir)
        log.debug("git.prepare_checkout", project=project, remote=remote.url, branch=branch)
        try:
            return await self._prepare(remote, branch, workdir)
        except _LocalStateError as exc:
            # The cache is only a cache: wipe it and clone afresh, once.
            log.warning("git.checkout_reset", project=project, workdir=workdir, error=exc.message)
            await self._run_checked(["rm", "-rf", "--", workdir], cwd="/", op="rm -rf checkout")
            try:
                return await self._prepare(remote, branch, workdir)
            except _LocalStateError as again:
                raise GitError(
                    f"project {project}: cannot prepare a checkout in {workdir}: {again.message}"
                ) from again

    async def _prepare(self, remote: GitRemote, branch: str, workdir: str) -> Checkout:
        git_dir = posixpath.join(workdir, ".git")
        leftovers = [posixpath.join(git_dir, name) for name in _LEFTOVERS]
        await self._run_checked(["rm", "-f", "--", *leftovers], cwd="/", op="rm leftovers")
        # `git init` makes the directory (and parents), and is harmless on an existing
        # repository: one path for a fresh clone and for a cached checkout.
        await self._git(
            ["init", "--quiet", f"--initial-branch={branch}", "--", workdir],
            cwd="/",
            op="init",
            error=_LocalStateError,
        )
        await self._neutralize_config(workdir, error=_LocalStateError)
        tracking = f"refs/remotes/origin/{branch}"
        head = await self._fetch(workdir, remote, branch, tracking)
        local = self._local(workdir)
        steps: list[list[str]] = [["symbolic-ref", "HEAD", f"refs/heads/{branch}"]]
        if head is not None:
            # reset --hard overwrites modified files and untracked files in the way.
            steps += [["reset", "--quiet", "--hard", head], ["update-ref", BASE_REF, head]]
        else:
            # Nothing to start from: an unborn branch, an empty index, an empty tree.
            steps += [
                ["update-ref", "-d", f"refs/heads/{branch}"],
                ["update-ref", "-d", tracking],
                ["update-ref", "-d", BASE_REF],
                ["read-tree", "--empty"],
            ]
        # -ff: also nested repositories; -x: also ignored files (a build starts from the
        # remote's exact tree, not from a previous build's node_modules).
        steps.append(["clean", "--quiet", "-ffdx"])
        for argv in steps:
            await self._git(argv, op=argv[0], error=_LocalStateError, **local)
        return Checkout(workdir=workdir, branch=branch, head=head)

    async def _fetch(
        self, workdir: str, remote: GitRemote, branch: str, tracking: str
    ) -> str | None:
        """Fetch ``branch`` into ``tracking``; its commit, or ``None`` if the remote has no
        such branch (an empty repository)."""
        result = await self._git(
            [
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--no-recurse-submodules",
                "--",
                remote.url,
                f"+refs/heads/{branch}:{tracking}",
            ],
            op="fetch",
            remote=remote,
            check=False,
            **self._local(workdir),
        )
        if not result.ok:
            stderr = _text(result.stderr)
            if "couldn't find remote ref" in stderr:
                return None
            detail = self._excerpt(result.stderr, remote)
            damaged = any(hint in stderr for hint in _LOCAL_DAMAGE)
            raise (_LocalStateError if damaged else GitError)(
                f"fetch of {branch} from {remote.url} failed: {detail}"
            )
        head = await self._resolve(workdir, tracking, env=self._local(workdir)["env"])
        if head is None:  # fetch said yes, the ref says no: a corrupt cache
            raise _LocalStateError(f"fetched {branch} but {tracking} is missing")
        return head

    async def has_changes(self, workdir: str) -> bool:
        """Files changed against the prepared commit, or commits made on top of it."""
        _require_checkout_dir(workdir)
        # Even a status may run commands an agent configured (clean filters): drop them.
        await self._neutralize_config(workdir)
        local = self._local(workdir)
        # untracked=normal lists a new directory once, not each of its (maybe 100 000)
        # files: only emptiness matters here.
        status = await self._git(
            ["status", "--porcelain", "-z", "--untracked-files=normal", "--ignore-submodules=none"],
            op="status",
            **local,
        )
        if status.stdout.strip(b"\0\n "):
            return True
        head = await self._resolve(workdir, "HEAD", env=local["env"])
        base = await self._resolve(workdir, BASE_REF, env=local["env"])
        if head == base:
            return False
        # Commits of the agent's own: they count if they changed the tree (not if a
        # commit was followed by its revert).
        return await self._tree_of(workdir, head) != await self._tree_of(workdir, base)

    async def commit(
        self,
        workdir: str,
        message: str,
        author: GitAuthor,
        trailers: Mapping[str, str] | None = None,
        *,
        allow_empty: bool = False,
    ) -> str:
        """One commit of the whole working tree on top of the prepared commit."""
        _require_checkout_dir(workdir)
        full_message = with_trailers(message, trailers or {})  # validates the trailers
        await self._neutralize_config(workdir)
        local = self._local(workdir)
        env = local["env"]
        # Plumbing, not `git commit`: the parent is always the prepared base, whatever the
        # agent did to HEAD (its own commits are folded in), and no hook can run.
        await self._git(["add", "--all", "--", "."], op="add", **local)
        tree = _text((await self._git(["write-tree"], op="write-tree", **local)).stdout).strip()
        base = await self._resolve(workdir, BASE_REF, env=env)
        if not allow_empty and tree == await self._tree_of(workdir, base):
            raise GitError(f"nothing to commit in {workdir}: the tree equals the prepared one")
        parents = ["-p", base] if base else []
        created = await self._git(
            ["commit-tree", tree, *parents, "-F", "-"],
            op="commit-tree",
            stdin=full_message.encode(),
            cwd=workdir,
            env={**env, **_author_env(author)},
        )
        sha = _text(created.stdout).strip()
        # Move whatever HEAD is (the branch, or a detached HEAD the agent left) to it.
        await self._git(["update-ref", "HEAD", sha], op="update-ref", **local)
        return sha

    async def push(
        self, workdir: str, remote: GitRemote, branch: str, *, force: bool = False
    ) -> PushResult:
        """Push HEAD to ``refs/heads/<branch>``; a refusal is a ``PushRejectedError``."""
        _require_checkout_dir(workdir)
        ref = f"refs/heads/{validate_branch_name(branch)}"
        await self._neutralize_config(workdir)
        local = self._local(workdir)
        sha = await self._resolve(workdir, "HEAD", env=local["env"])
        if sha is None:
            raise GitError(f"nothing to push from {workdir}: no commit yet")
        result = await self._git(
            [
                "push",
                "--porcelain",
                "--no-verify",
                "--no-recurse-submodules",
                "--",
                remote.url,
                f"{'+' if force else ''}{sha}:{ref}",
            ],
            op="push",
            remote=remote,
            check=False,
            **local,
        )
        refs = [r for r in parse_push_porcelain(_text(result.stdout)) if r.destination == ref]
        rejected = next((r for r in refs if r.rejected), None)
        if rejected is not None:
            said = remote_messages(self._excerpt(result.stderr, remote))
            reason = rejected.reason + (f": {'; '.join(said)}" if said else "")
            raise PushRejectedError(ref, reason)
        if not result.ok or not refs or refs[0].outcome is None:
            raise GitError(
                f"push of {ref} to {remote.url} failed: {self._excerpt(result.stderr, remote)}"
            )
        return PushResult(ref=ref, sha=sha, outcome=refs[0].outcome)

    async def remove_checkout(self, workdir: str) -> None:
        """``rm -rf``; if that fails (a directory an unprivileged agent made unwritable),
        ``chmod -R u+rwx`` and again. ``chmod -R`` never follows a link inside the tree."""
        _require_checkout_dir(workdir)
        remove = ["rm", "-rf", "--", workdir]
        first = await self._run(
            remove, cwd="/", env=self._env, stdin=None, timeout_s=self._timeout_s, op="rm -rf"
        )
        if not first.ok:
            await self._run_checked(["chmod", "-R", "u+rwx", "--", workdir], cwd="/", op="chmod")
            await self._run_checked(remove, cwd="/", op="rm -rf checkout")

    async def find_task_commit(self, workdir: str, task_id: str) -> str | None:
        """The newest commit of the prepared branch with ``Forgeline-Task: <task_id>``."""
        _require_checkout_dir(workdir)
        local = self._local(workdir)
        if await self._resolve(workdir, BASE_REF, env=local["env"]) is None:
            return None
        # --grep narrows cheaply; the trailer itself is then checked, so a prompt merely
        # quoting the line in its body does not count.
        result = await self._git(
            [
                "log",
                "-z",
                "--max-count=20",
                "--fixed-strings",
                f"--grep={TASK_TRAILER}: {task_id}",
                f"--format=%H%x1f%(trailers:key={TASK_TRAILER},valueonly,separator=%x1f)",
                BASE_REF,
                "--",
            ],
            op="log",
            **local,
        )
        for record in split_nul(_text(result.stdout)):
            sha, *values = record.strip().split("\x1f")
            if task_id in (v.strip() for v in values):
                return sha
        return None

    # --- what a build pushed ---------------------------------------------------------------

    async def commit_patch(self, remote: GitRemote, sha: str, scratch: str) -> str:
        """The diff of ``sha`` against its first parent, read from ``remote``."""
        if not _FULL_SHA.fullmatch(sha):
            raise ValidationError(f"{sha!r} is not a full commit id")
        if remote.kind is RemoteKind.PATH:
            return await self._patch(remote.url.removeprefix("file://"), sha)
        _require_checkout_dir(scratch)
        await self.init_bare(scratch)
        try:
            # A want of any reachable commit is allowed by protocol v2 servers; two
            # commits deep brings the parent's tree too, and nothing older.
            await self._git(
                [
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    "--no-write-fetch-head",
                    "--depth=2",
                    "--",
                    remote.url,
                    sha,
                ],
                cwd=scratch,
                env={"GIT_DIR": scratch},
                op="fetch",
                remote=remote,
            )
            return await self._patch(scratch, sha)
        finally:
            await self._run_checked(["rm", "-rf", "--", scratch], cwd="/", op="rm -rf scratch")

    async def _patch(self, git_dir: str, sha: str) -> str:
        env = {"GIT_DIR": git_dir}
        if await self._resolve(git_dir, sha, env=env) is None:
            raise GitError(f"no commit {sha} in {git_dir}")
        result = await self._git(
            [
                "diff-tree",
                "--patch",
                "--root",
                "--no-commit-id",
                "--find-renames",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                "--end-of-options",
                sha,
            ],
            cwd=git_dir,
            env=env,
            op="diff-tree",
        )
        return _text(result.stdout)

    # --- helpers -------------------------------------------------------------------------

    def _local(self, workdir: str) -> _LocalArgs:
        # Name the repository explicitly: if an agent deleted .git, git must fail here
        # rather than discover (and commit to) a repository above the checkout.
        return {
            "cwd": workdir,
            "env": {"GIT_DIR": posixpath.join(workdir, ".git"), "GIT_WORK_TREE": workdir},
        }

    async def _neutralize_config(self, workdir: str, *, error: type[GitError] = GitError) -> None:
        """Cut the checkout's ``.git/config`` down to :data:`_ALLOWED_LOCAL_CONFIG`."""
        local = self._local(workdir)
        listed = await self._git(
            ["config", "--local", "--null", "--name-only", "--list"],
            op="config --list",
            error=error,
            **local,
        )
        for name in sorted(set(split_nul(_text(listed.stdout)))):
            if name.lower() not in _ALLOWED_LOCAL_CONFIG:
                log.info("git.config_removed", workdir=workdir, key=name)
                await self._git(
                    ["config", "--local", "--unset-all", name],
                    op="config --unset-all",
                    error=error,
                    **local,
                )

    async def _resolve(self, cwd: str, ref: str, *, env: Mapping[str, str]) -> str | None:
        """The commit ``ref`` names, or ``None`` if it does not exist."""
        result = await self._git(
            ["rev-parse", "--quiet", "--verify", "--end-of-options", f"{ref}^{{commit}}"],
            cwd=cwd,
            env=env,
            op="rev-parse",
            check=False,
        )
        if result.ok:
            return _text(result.stdout).strip()
        if result.exit_code == 1:  # --verify --quiet: "no such ref", nothing printed
            return None
        raise GitError(f"git rev-parse {ref} failed: {self._excerpt(result.stderr)}")

    async def _tree_of(self, workdir: str, commit: str | None) -> str:
        """The tree of ``commit``; the empty tree for ``None`` (an unborn branch)."""
        local = self._local(workdir)
        if commit is None:
            result = await self._git(
                ["hash-object", "-t", "tree", "--stdin"], op="hash-object", stdin=b"", **local
            )
        else:
            result = await self._git(
                ["rev-parse", "--verify", "--end-of-options", f"{commit}^{{tree}}"],
                op="rev-parse",
                **local,
            )
        return _text(result.stdout).strip()

    async def _git(
        self,
        args: Sequence[str],
        *,
        cwd: str,
        op: str,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        remote: GitRemote | None = None,
        check: bool = True,
        error: type[GitError] = GitError,
    ) -> CommandResult:
        """Run ``git <args>`` with forgeline's configuration; raise ``error`` on failure
        when ``check``. A ``remote`` makes it a network command: its timeout, and its
        credentials in the environment."""
        argv = [self._binary]
        for item in _BASE_CONFIG:
            argv += ["-c", item]
        child_env = {**self._env, **(env or {})}
        timeout = self._timeout_s
        if remote is not None:
            timeout = self._network_timeout_s
            if remote.token is not None:
                token = remote.token.reveal()
                if any(c in token for c in "\n\r\0"):
                    raise ValidationError("the git token contains a line break")
                # Scoped to the remote's scheme://host[:port]: should the server redirect
                # git elsewhere, the token is not offered to that other host.
                argv += ["-c", f"credential.{remote.origin}.helper={_CREDENTIAL_HELPER}"]
                child_env[_USER_VAR] = remote.auth_username
                child_env[_TOKEN_VAR] = token
        argv += args
        result = await self._run(
            argv, cwd=cwd, env=child_env, stdin=stdin, timeout_s=timeout, op=f"git {op}"
        )
        if check and not result.ok:
            detail = self._excerpt(result.stderr, remote)
            raise error(f"git {op} failed (exit {result.exit_code}): {detail}")
        return result

    async def _run_checked(self, argv: Sequence[str], *, cwd: str, op: str) -> None:
        """A non-git helper command (``rm``) in the same bounded, explicit environment."""
        result = await self._run(
            argv, cwd=cwd, env=self._env, stdin=None, timeout_s=self._timeout_s, op=op
        )
        if not result.ok:
            raise GitError(f"{op} failed (exit {result.exit_code}): {self._excerpt(result.stderr)}")

    async def _run(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        stdin: bytes | None,
        timeout_s: float,
        op: str,
    ) -> CommandResult:
        """Run ``argv`` in the workspace within ``timeout_s``; ``op`` names it in errors.
        A start failure, an overrun or a signal is a ``GitError``; an exit code is not."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s + _BACKSTOP_S):
                result = await self._workspace.run(
                    argv, cwd=cwd, env=env, timeout_s=timeout_s, stdin=stdin
                )
        except TimeoutError as exc:
            raise GitError(f"{op} did not finish within {timeout_s:g} s") from exc
        except WorkspaceError as exc:
            raise GitError(f"{op}: {self._excerpt(exc.message.encode(), None)}") from exc
        if result.exit_code < 0:
            # Killed by a signal: a workspace that reports its timeout this way rather than
            # raising, or an operator's kill. Nothing it printed is worth parsing.
            raise GitError(
                f"{op} was ended by signal {-result.exit_code} (its time limit is {timeout_s:g} s)"
            )
        # argv is safe to log: it never holds a secret (see the module docstring). The
        # fixed `-c` options are left out as noise.
        shown = list(argv[1:] if argv[0] == self._binary else argv)
        while len(shown) > 1 and shown[0] == "-c":
            shown = shown[2:]
        log.debug(
            "git.command",
            op=op,
            argv=shown,
            exit_code=result.exit_code,
            ms=round((time.monotonic() - started) * 1000),
        )
        return result

    def _excerpt(self, stderr: bytes, remote: GitRemote | None = None) -> str:
        secrets = [remote.token.reveal()] if remote is not None and remote.token else []
        text = excerpt(_text(stderr), secrets)
        return self._redactor.redact(text) if self._redactor else text


class _LocalArgs(TypedDict):
    """Where a checkout's commands run: ``cwd`` and ``env`` arguments of ``_git``."""

    cwd: str
    env: dict[str, str]


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _author_env(author: GitAuthor) -> dict[str, str]:
    return {
        "GIT_AUTHOR_NAME": author.name,
        "GIT_AUTHOR_EMAIL": author.email,
        "GIT_COMMITTER_NAME": author.name,
        "GIT_COMMITTER_EMAIL": author.email,
    }


def _require_abs(path: str) -> None:
    if not path.startswith("/") or posixpath.normpath(path) != path.rstrip("/"):
        raise ValidationError(f"git paths must be absolute and normalized, got {path!r}")


def _require_checkout_dir(workdir: str) -> None:
    # A checkout is wiped with `clean -ffdx` and, if broken, `rm -rf`: refuse anything
    # that could be a system directory by mistake.
    _require_abs(workdir)
    if workdir.rstrip("/").count("/") < 2:
        raise ValidationError(f"refusing {workdir!r} as a checkout directory: too shallow")


def _conforms_to_the_port(adapter: GitCli) -> Git:
    # Never called: mypy proves here that GitCli implements the Git port.
    return adapter


__all__ = ["BASE_REF", "DEFAULT_NETWORK_TIMEOUT_S", "DEFAULT_TIMEOUT_S", "GitCli"]
