"""The bubblewrap sandbox: every agent command confined to its own directories.

:class:`BubblewrapWorkspace` runs each command of an agent (the ``claude`` CLI, an
``opencode serve``) inside ``bwrap``, on top of the local workspace, so that the command:

- has its own PID, IPC, UTS and (where possible) cgroup namespaces: ``/proc`` shows only
  the run, forgeline's processes can be neither seen nor signalled;
- runs as an unprivileged uid in a user namespace of its own (uid 1000 inside), with no
  capabilities, ``no_new_privs``, and no further user namespaces;
- sees a read-only system (``/usr``, ``/etc``, the ``/bin``-style links), the agent CLI's own
  install, read-only, a private ``/tmp``, a fresh ``/dev`` — and, writable, exactly the
  directories the caller names (the attempt's checkout, the agent's HOME and state). The
  ``.git`` of a writable directory stays read-only: commits and pushes are forgeline's.
  Nothing else of the host's disk exists inside: no data directory, no keys, no database,
  no other checkout, no bare repository, no forgeline source;
- dies with its supervisor: ``--die-with-parent`` (SIGKILL on the death of the process that
  started it, even by SIGKILL) plus the PID namespace (when its first process dies, the
  kernel kills every other one) leave nothing running behind a killed worker.

The network is shared (the model API and package registries must stay reachable).

**Running as root.** An unprivileged user namespace maps the sandbox's uid to the caller's:
for a forgeline running as root that would be root again, with every root-only file of the
bound system readable. So as root the sandbox is two-staged: an outer ``bwrap`` (root,
no user namespace) builds the view, ``setpriv`` drops to ``FORGELINE_SANDBOX_UID`` with no
capabilities, and an inner ``bwrap`` enters the user namespace. The writable directories are
handed to that uid (``lchown``, never through a symlink) before each command, and those
that belonged to someone else back to their owner once it has ended (a ``forgeline agent
run`` in someone's directory leaves it theirs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from forgeline.adapters._aio import finish_despite_cancel
from forgeline.adapters.workspace.local import LocalProcess, LocalWorkspace
from forgeline.adapters.workspace.proctree import descendants, process_name
from forgeline.domain.errors import ConfigurationError, WorkspaceError
from forgeline.ports.workspace import CommandResult

#: The uid and gid the command has inside its user namespace (not root: Claude Code
#: allows ``bypassPermissions`` to a non-root user without ``IS_SANDBOX``).
INSIDE_UID = 1000

#: Where the system's programs and libraries are, visible read-only in every sandbox.
_SYSTEM_DIRS = ("/usr", "/etc")
#: Top-level names that are links into ``/usr`` on merged-usr systems, directories elsewhere.
_SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: Directories that exist in every sandbox as mounts of their own (never re-created).
_MOUNT_POINTS = frozenset({"/", "/tmp", "/proc", "/dev"})  # noqa: S108 - the sandbox's own
#: Processes of the sandbox's own plumbing, skipped when looking for "the command".
_PLUMBING = frozenset({"bwrap", "setpriv"})

#: What to tell an operator whose machine cannot run the sandbox.
FIX_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) and allow unprivileged "
    "user namespaces (sysctl kernel.unprivileged_userns_clone=1 where that knob exists, "
    "user.max_user_namespaces > 0; in a container, run it with a seccomp/AppArmor profile "
    "that permits them), or run builds without a sandbox by setting FORGELINE_SANDBOX=none "
    "explicitly"
)


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How sandboxes are built.

    ``uid``/``gid`` are used only when forgeline runs as root (see the module docstring).
    ``read_only`` lists more host paths every sandbox may read (a CA bundle outside
    ``/etc``, a toolchain outside ``/usr``).
    """

    bwrap: str = "bwrap"
    uid: int = 65534
    gid: int = 65534
    read_only: tuple[str, ...] = ()


def install_root(program: str, path: str | None) -> tuple[str, str] | None:
    """Where an agent CLI runs from: ``(what to show read-only, what to execute)``.

    ``program`` is looked up on ``path`` (the child's PATH) and followed through its links:
    inside an npm tree the outermost ``node_modules`` is shown (a launcher finds its native
    binary in a sibling package) and the program runs as found; elsewhere only the real
    file is shown, and run. ``None`` when the program cannot be found.
    """
    found = shutil.which(program, path=path)
    if found is None:
        return None
    real = Path(found).resolve()
    for parent in reversed(real.parents):
        if parent.name == "node_modules":
            inside = parent in Path(found).parents
            return str(parent), found if inside else str(real)
    return str(real), str(real)


def _within(path: str, roots: Sequence[str]) -> bool:
    pure = PurePosixPath(path)
    return any(pure == PurePosixPath(r) or PurePosixPath(r) in pure.parents for r in roots)


class SandboxView:
    """The mount arguments of one sandbox, built bind by bind.

    Destinations are the host paths themselves (a command sees its checkout where forgeline
    put it). Directories bwrap must create on the way to a bind are made 0755 explicitly:
    by default it copies the host's modes, and a 0700 data directory would lock the
    unprivileged user out of its own checkout.
    """

    def __init__(self) -> None:
        self.args: list[str] = []
        #: Host paths bound so far: what lies below them is visible already.
        self._covered: list[str] = []
        #: Directories made on the way to a bind (two binds often share their parents).
        self._made: set[str] = set()

    def system(self) -> SandboxView:
        """The read-only system, ``/proc``, ``/dev`` and a private ``/tmp``."""
        for name in _SYSTEM_LINKS:
            if os.path.islink(name):  # noqa: PTH114 - a handful of stat calls, no Path needed
                self.args += ["--symlink", os.readlink(name), name]  # noqa: PTH115
            elif os.path.isdir(name):  # noqa: PTH112
                self.read_only(name)
        for name in _SYSTEM_DIRS:
            self.read_only(name)
        # A resolv.conf linked out of /etc (systemd-resolved) must be reachable too.
        resolv = os.path.realpath("/etc/resolv.conf")
        if not _within(resolv, _SYSTEM_DIRS) and os.path.exists(resolv):  # noqa: PTH110
            self.read_only(resolv)
        # /tmp world-writable and sticky: made by a root bwrap, it would otherwise be closed
        # to the unprivileged uid (and the claude CLI waits forever for a TMPDIR it can't use).
        self.args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]  # noqa: S108
        return self

    def shows(self, path: str) -> bool:
        """True when ``path`` lies in something bound so far."""
        return _within(path, self._covered)

    def read_only(self, path: str) -> SandboxView:
        """Show ``path`` read-only (nothing when an earlier bind shows it already)."""
        return self._bind("--ro-bind", path)

    def writable(self, path: str) -> SandboxView:
        """Show ``path`` writable; its ``.git``, if any, stays read-only."""
        self._bind("--bind", path)
        git_dir = os.path.join(path, ".git")  # noqa: PTH118
        if os.path.isdir(git_dir) and not os.path.islink(git_dir):  # noqa: PTH112, PTH114
            self.args += ["--ro-bind", git_dir, git_dir]
        return self

    def _bind(self, flag: str, path: str) -> SandboxView:
        if flag == "--ro-bind" and _within(path, self._covered):
            return self
        for parent in reversed(PurePosixPath(path).parents):
            text = str(parent)
            if text in _MOUNT_POINTS or text in self._made or _within(text, self._covered):
                continue
            self.args += ["--perms", "0755", "--dir", text]
            self._made.add(text)
        self.args += [flag, path, path]
        self._covered.append(path)
        return self


#: A writable directory's owner before a run: ``(path, uid, gid)``.
Owner = tuple[str, int, int]


class SandboxedProcess:
    """A command running in a sandbox: the local process of its ``bwrap``, whose signals
    reach the command itself (``bwrap`` forwards none, and dies at once of a SIGINT or
    SIGTERM, which would kill the run before the agent could report or save its state)."""

    def __init__(self, inner: LocalProcess, owners: Sequence[Owner] = ()) -> None:
        self._inner = inner
        self._owners = owners
        self._ending: asyncio.Task[int | None] | None = None

    @property
    def pid(self) -> int | None:
        """The pid of the outermost ``bwrap``."""
        return self._inner.pid

    @property
    def returncode(self) -> int | None:
        """The command's exit code (``bwrap`` passes it on)."""
        return self._inner.returncode

    def stdout_lines(self) -> AsyncIterator[bytes]:
        """The command's stdout, line by line."""
        return self._inner.stdout_lines()

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines of stderr (the command's, and bwrap's own complaints)."""
        return self._inner.stderr_tail(lines)

    async def send(self, data: bytes, timeout_s: float = 10.0) -> None:
        """Write to the command's stdin (``bwrap`` hands its own stdin on)."""
        await self._inner.send(data, timeout_s)

    def close_stdin(self) -> None:
        """Close the command's stdin."""
        self._inner.close_stdin()

    async def wait(self) -> int:
        """The exit code, once the sandbox ended."""
        return await self._inner.wait()

    async def interrupt(self) -> None:
        """SIGINT to the command (so it can end cleanly and report)."""
        self._signal_command(signal.SIGINT)

    async def kill(self, grace_s: float = 1.0) -> int | None:
        """SIGTERM to the command, ``grace_s`` to go; then the sandbox is ended (its
        ``bwrap`` and, through the PID namespace, everything in it) and its directories
        handed back. Bounded, idempotent, finished even if the caller is cancelled."""
        if self._ending is None:
            self._ending = asyncio.get_running_loop().create_task(
                self._end(grace_s), name=f"sandbox-end-{self._inner.pid}"
            )
        return await finish_despite_cancel(self._ending)

    async def _end(self, grace_s: float) -> int | None:
        try:
            if self._inner.returncode is None:
                self._signal_command(signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace_s):
                        await self._inner.wait()
            return await self._inner.kill(0.1)
        finally:
            await _give_back(self._owners)

    def _signal_command(self, sig: int) -> None:
        """``sig`` to the first process below the sandbox's plumbing: the command."""
        pid = self._inner.pid
        if pid is None or self._inner.returncode is not None:
            return
        for child in descendants(pid):
            if process_name(child) not in _PLUMBING:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(child, sig)
                return


class BubblewrapWorkspace:
    """The local workspace with every command inside a bubblewrap sandbox.

    Only the directories a caller names as ``writable`` can be written; everything else of
    the host is read-only system or absent (see the module docstring). :meth:`check` tells
    at start-up whether sandboxes can run here at all.
    """

    def __init__(self, config: SandboxConfig | None = None, *, local: LocalWorkspace | None = None):
        self._config = config or SandboxConfig()
        self._local = local or LocalWorkspace()
        self._as_root = os.geteuid() == 0

    @property
    def name(self) -> str:
        """``local+bwrap``."""
        return "local+bwrap"

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        line_limit: int,
        writable: Sequence[str] = (),
    ) -> SandboxedProcess:
        """Start ``argv`` in a new sandbox where only ``writable`` can be written."""
        return await self._spawn(
            self._local.spawn, argv, cwd=cwd, env=env, line_limit=line_limit, writable=writable
        )

    async def spawn_duplex(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        line_limit: int,
        writable: Sequence[str] = (),
    ) -> SandboxedProcess:
        """As :meth:`spawn`, with the command's stdin a pipe forgeline writes to."""
        return await self._spawn(
            self._local.spawn_duplex,
            argv,
            cwd=cwd,
            env=env,
            line_limit=line_limit,
            writable=writable,
        )

    async def _spawn(
        self,
        start: Callable[..., Awaitable[LocalProcess]],
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        line_limit: int,
        writable: Sequence[str],
    ) -> SandboxedProcess:
        """``argv`` wrapped in ``bwrap`` and started by ``start`` (a local spawn)."""
        wrapped, owners = await self._prepare(argv, cwd=cwd, env=env, writable=writable)
        try:
            process = await start(wrapped, cwd="/", env=env, line_limit=line_limit)
        except BaseException:
            await _give_back(owners)
            raise
        return SandboxedProcess(process, owners)

    async def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        timeout_s: float,
        stdin: bytes | None = None,
        writable: Sequence[str] = (),
    ) -> CommandResult:
        """Run a short command in a new sandbox; the result names the command, not bwrap."""
        wrapped, owners = await self._prepare(argv, cwd=cwd, env=env, writable=writable)
        try:
            result = await self._local.run(
                wrapped, cwd="/", env=env, timeout_s=timeout_s, stdin=stdin
            )
        finally:
            await _give_back(owners)
        return CommandResult(tuple(argv), result.exit_code, result.stdout, result.stderr)

    async def ensure_dir(self, path: str) -> None:
        """``mkdir -p`` on the host (the directories sandboxes are later given)."""
        await self._local.ensure_dir(path)

    async def list_dir(self, path: str) -> list[str]:
        """The names in a host directory (empty when it does not exist)."""
        return await self._local.list_dir(path)

    async def kill_processes_in(self, path: str) -> int:
        """As the local workspace (a sandbox's processes end with their worker anyway)."""
        return await self._local.kill_processes_in(path)

    async def check(self) -> None:
        """Run ``true`` in a sandbox; ``ConfigurationError`` naming the fix if that fails."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
        try:
            result = await self.run(["true"], cwd="/", env=env, timeout_s=10.0)
        except WorkspaceError as exc:
            raise ConfigurationError(
                f"the build sandbox cannot start: {exc.message}; {FIX_HINT}"
            ) from exc
        if not result.ok:
            reason = result.stderr_tail(3) or f"exit {result.exit_code}"
            raise ConfigurationError(f"the build sandbox cannot start ({reason}); {FIX_HINT}")

    # --- the command line ------------------------------------------------------------------

    async def _prepare(
        self, argv: Sequence[str], *, cwd: str, env: Mapping[str, str], writable: Sequence[str]
    ) -> tuple[list[str], list[Owner]]:
        """The command line, and the owners to give the writable directories back to."""
        if not argv:
            raise WorkspaceError("empty command")
        command = self.command_line(argv, cwd=cwd, path=env.get("PATH"), writable=writable)
        if not (self._as_root and writable):
            return command, []
        owners = await asyncio.to_thread(_hand_over, writable, self._config.uid, self._config.gid)
        return command, owners

    def command_line(
        self, argv: Sequence[str], *, cwd: str, path: str | None, writable: Sequence[str]
    ) -> list[str]:
        """The ``bwrap`` command line that runs ``argv`` in ``cwd`` (see the class)."""
        view = SandboxView().system()
        for extra in self._config.read_only:
            view.read_only(extra)
        cli = install_root(argv[0], path)
        if cli is None:
            # As the local workspace says it (bwrap's own words would be about execvp).
            raise WorkspaceError(f"cannot start {argv[0]!r}: program {argv[0]!r} not found")
        shown, program = cli
        if self._as_root and stat.S_IMODE(os.stat(shown).st_mode) & 0o005 != 0o005:  # noqa: PTH116
            raise WorkspaceError(
                f"cannot start {argv[0]!r}: {shown} is not readable and executable by the "
                f"sandbox's user (uid {self._config.uid}); chmod o+rx it"
            )
        view.read_only(shown)
        for directory in writable:
            view.writable(directory)
        if cwd != "/" and not view.shows(cwd):
            # Binding it here would expose whatever it is (the data directory, say).
            raise WorkspaceError(f"{cwd!r} is not visible in the sandbox; make it writable")
        namespaces = [
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "forgeline-sandbox",
            "--die-with-parent",
            # Its own session: no terminal of forgeline's can be reached (TIOCSTI).
            "--new-session",
        ]
        user = [
            "--unshare-user",
            "--disable-userns",
            "--uid",
            str(INSIDE_UID),
            "--gid",
            str(INSIDE_UID),
        ]
        tail = ["--chdir", cwd, "--setenv", "TMPDIR", "/tmp", "--", program, *argv[1:]]  # noqa: S108
        bwrap = self._config.bwrap
        if not self._as_root:
            return [bwrap, *namespaces, *user, *view.args, *tail]
        drop = [
            "setpriv",
            f"--reuid={self._config.uid}",
            f"--regid={self._config.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]
        return [
            bwrap,
            *namespaces,
            "--cap-add",
            "CAP_SETUID",
            "--cap-add",
            "CAP_SETGID",
            *view.args,
            "--",
            *drop,
            bwrap,
            *user,
            # The outer view, whole; --dev-bind, or /dev/null would be unusable (nodev).
            "--dev-bind",
            "/",
            "/",
            "--die-with-parent",
            *tail,
        ]


def _hand_over(directories: Sequence[str], uid: int, gid: int) -> list[Owner]:
    """Give ``directories`` (recursively) to the sandbox's uid; the owners to give them back
    to afterwards. A checkout's ``.git`` too, though it is bound read-only: git inside
    refuses a repository owned by someone else ("dubious ownership"). Directories of
    forgeline's own (an attempt's checkout, an agent's state) are not given back: forgeline
    reads them as root anyway, and the walk costs time on large trees."""
    owners = []
    for top in directories:
        info = os.lstat(top)
        if info.st_uid != os.geteuid():
            owners.append((top, info.st_uid, info.st_gid))
        _chown_tree(top, uid, gid)
    return owners


async def _give_back(owners: Sequence[Owner]) -> None:
    """:func:`_hand_back` off the event loop, finished even if the caller is cancelled."""
    if owners:
        await asyncio.shield(asyncio.to_thread(_hand_back, owners))


def _hand_back(owners: Sequence[Owner]) -> None:
    """Give each directory (and all the command made in it) back to its owner."""
    for top, uid, gid in owners:
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile: nothing to give
            _chown_tree(top, uid, gid)


def _chown_tree(top: str, uid: int, gid: int) -> None:
    # lchown: a symlink in the tree is changed itself, never what it points to.
    os.lchown(top, uid, gid)
    for root, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(root, name), uid, gid)  # noqa: PTH118
