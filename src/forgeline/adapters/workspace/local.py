"""The local workspace: commands run as children of forgeline, in a directory on this host.

Each command runs in a session of its own, with exactly the environment given plus the run
marker (:data:`~forgeline.ports.workspace.RUN_MARKER_VAR`, see ``proctree``), so that
killing it reaches every process it started. A streamed command (:meth:`LocalWorkspace.spawn`)
writes its stdout to an unlinked temporary file that is followed (see :class:`LocalProcess`
for why not a pipe); a short command (:meth:`LocalWorkspace.run`) uses pipes.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import io
import os
import signal
import tempfile
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from asyncinotify import Inotify, Mask

from forgeline.adapters._aio import finish_despite_cancel
from forgeline.adapters.workspace.proctree import find_run_processes, processes_in, signal_all
from forgeline.domain.errors import LineTooLongError, WorkspaceError
from forgeline.ports.workspace import RUN_MARKER_VAR, CommandResult

#: How often the kill sequence looks for processes that are still there.
_POLL_S = 0.05
#: After SIGKILL, how long to wait for the kernel to take everything down.
_KILL_WAIT_S = 2.0
#: stderr kept per process: the last lines, and never more than this many bytes.
_STDERR_KEEP_LINES = 200
_STDERR_KEEP_BYTES = 64 * 1024


class StderrTail:
    """The last lines of a stream, bounded in lines and bytes."""

    def __init__(self) -> None:
        self._lines: deque[str] = deque(maxlen=_STDERR_KEEP_LINES)
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        """Add a chunk read from the stream."""
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        self._partial = self._partial[-_STDERR_KEEP_BYTES:]
        for line in complete:
            self._lines.append(line[-_STDERR_KEEP_BYTES:].decode(errors="replace"))

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines (a trailing partial line included)."""
        kept = list(self._lines)
        if self._partial:
            kept.append(self._partial.decode(errors="replace"))
        text = "\n".join(kept[-lines:])
        return text[-_STDERR_KEEP_BYTES:]


async def drain_stderr(stream: asyncio.StreamReader, sink: StderrTail) -> None:
    """Read ``stream`` to EOF into ``sink`` (so the child never blocks on a full pipe)."""
    while chunk := await stream.read(65536):
        sink.feed(chunk)


async def read_lines(stream: asyncio.StreamReader, limit: int) -> AsyncIterator[bytes]:
    """Lines of ``stream`` without their newline; ``LineTooLongError`` past ``limit`` bytes.

    The stream must have been created with ``limit`` as its buffer limit: asyncio then stops
    buffering at the limit and raises instead, so an endless line cannot exhaust memory.
    """
    while True:
        try:
            line = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                yield exc.partial  # the last line had no newline
            return
        except asyncio.LimitOverrunError as exc:
            raise LineTooLongError(limit) from exc
        yield line[:-1]


#: Reads of a file-backed stdout take up to this much at once.
_FOLLOW_CHUNK = 256 * 1024
#: A follower without inotify (none left: ``fs.inotify.max_user_instances``) reads this often.
_FOLLOW_POLL_S = 0.05
#: With inotify, a follower looks anyway after this long without word (a safety net: a
#: change the kernel does not report, such as a write through a shared mapping).
_FOLLOW_SAFETY_S = 1.0


class _Changes:
    """Waits until a file another process writes to may have grown: inotify on the file's
    inode (found through ``/proc/self/fd``, so an unlinked file works too), which reports
    each write at once. Without inotify, a short poll."""

    _MASK = Mask.MODIFY | Mask.CLOSE_WRITE | Mask.CLOSE_NOWRITE

    def __init__(self, out: io.FileIO) -> None:
        self._inotify: Inotify | None = None
        try:
            inotify = Inotify()
        except OSError:
            return
        try:
            inotify.add_watch(f"/proc/self/fd/{out.fileno()}", self._MASK)
        except OSError:
            inotify.close()
            return
        self._inotify = inotify

    async def wait(self, exited: asyncio.Future[int]) -> None:
        """Return on a change of the file (our own close of it included), when ``exited``
        is done, or after a safety delay."""
        if self._inotify is None:
            await asyncio.wait({exited}, timeout=_FOLLOW_POLL_S)
            return
        change = asyncio.ensure_future(self._inotify.get())
        either: set[asyncio.Future[Any]] = {change, exited}
        try:
            await asyncio.wait(
                either, timeout=_FOLLOW_SAFETY_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            change.cancel()

    def close(self) -> None:
        """Release the inotify descriptor."""
        if self._inotify is not None:
            self._inotify.close()


async def follow_lines(
    out: io.FileIO, proc: asyncio.subprocess.Process, limit: int
) -> AsyncIterator[bytes]:
    """Lines of a regular file a running ``proc`` writes to, until ``proc`` exited and all
    it wrote was read; ``LineTooLongError`` past ``limit`` bytes.

    Regular files have no readiness to wait for: the follower reads until it has all that
    is there, then waits for inotify's word of the next write (see :class:`_Changes`) or
    the process's exit, so a line is read as soon as it is written. Reads from the page
    cache are quick enough for the event loop. Ends quietly if ``out`` is closed meanwhile
    (the process was killed and its handle released).
    """
    buf = bytearray()
    scan = 0  # where to look for the next newline: what was scanned has none
    changes = _Changes(out)
    exited = asyncio.ensure_future(proc.wait())
    try:
        while not out.closed:
            ended = proc.returncode is not None  # checked *before* the read: no lost tail
            chunk = out.read(_FOLLOW_CHUNK)
            if chunk:
                buf += chunk
                start = 0
                while (newline := buf.find(b"\n", scan)) != -1:
                    yield bytes(buf[start:newline])
                    start = scan = newline + 1
                del buf[:start]
                scan = len(buf)
                if len(buf) > limit:
                    raise LineTooLongError(limit)
                continue
            if ended:
                if buf:
                    yield bytes(buf)  # the last line had no newline
                return
            await changes.wait(exited)
    finally:
        exited.cancel()
        changes.close()


async def write_stdin(proc: asyncio.subprocess.Process, data: bytes, timeout_s: float) -> None:
    """Write ``data`` to ``proc``'s stdin pipe and wait until it took it, at most
    ``timeout_s``; ``WorkspaceError`` when the pipe is closed or the child stopped reading."""
    stdin = proc.stdin
    if stdin is None or stdin.is_closing():
        raise WorkspaceError(f"the stdin of process {proc.pid} is closed")
    try:
        stdin.write(data)
        async with asyncio.timeout(timeout_s):
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise WorkspaceError(f"process {proc.pid} stopped reading its stdin") from exc
    except TimeoutError as exc:
        raise WorkspaceError(
            f"process {proc.pid} did not read its stdin within {timeout_s:g} s"
        ) from exc


class ChildProcess(abc.ABC):
    """What a command's handle shares in every workspace: the asyncio child (``forgeline``'s
    own, or the ``kubectl exec`` standing for a command in a pod), its stderr drained into a
    bounded tail, its stdin, and one kill sequence however often :meth:`kill` is called."""

    def __init__(self, proc: asyncio.subprocess.Process, line_limit: int, label: str) -> None:
        self._proc = proc
        self._line_limit = line_limit
        self._label = label
        self._stderr = StderrTail()
        self._kill_task: asyncio.Task[int | None] | None = None
        assert proc.stderr is not None  # noqa: S101 - spawn always pipes stderr
        self._stderr_task = asyncio.get_running_loop().create_task(
            drain_stderr(proc.stderr, self._stderr), name=f"{label}-stderr-{proc.pid}"
        )

    @property
    def pid(self) -> int | None:
        """The child's pid (for a pod's command, the local ``kubectl``'s)."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, once reaped (``kubectl``'s is the remote command's)."""
        return self._proc.returncode

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines of stderr."""
        return self._stderr.tail(lines)

    async def send(self, data: bytes, timeout_s: float = 10.0) -> None:
        """Write ``data`` to stdin (a pipe only for a ``spawn_duplex`` command);
        ``WorkspaceError`` when the child is gone or has not read it within ``timeout_s``."""
        await write_stdin(self._proc, data, timeout_s)

    def close_stdin(self) -> None:
        """Close stdin, if it is a pipe (idempotent): the command reads its end."""
        if self._proc.stdin is not None:
            self._proc.stdin.close()

    async def wait(self) -> int:
        """The exit code, once the child ended and stderr was read to its end."""
        code = await self._proc.wait()
        # stderr may still hold the child's last words; they matter for error reports.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.shield(self._stderr_task)
        return code

    async def kill(self, grace_s: float = 1.0) -> int | None:
        """End the command and everything it started (:meth:`_terminate`), once; bounded,
        and finished even when the caller is cancelled."""
        if self._kill_task is None:
            self._kill_task = asyncio.get_running_loop().create_task(
                self._terminate(grace_s), name=f"{self._label}-kill-{self._proc.pid}"
            )
        return await finish_despite_cancel(self._kill_task)

    @abc.abstractmethod
    async def _terminate(self, grace_s: float) -> int | None:
        """The kill sequence of this kind of command."""


class LocalProcess(ChildProcess):
    """A command started by :class:`LocalWorkspace`, in its own session, marked by a token.

    Its stdout is a regular (already unlinked) file that :meth:`stdout_lines` follows, not a
    pipe. Why: the Claude CLI is a Bun program whose writes to a full pipe are queued in the
    process and dropped when it exits — a reader that falls behind for a moment (parsing a
    5 MB line) loses the end of the run, ``result`` included, and the CLI still exits 0.
    Writes to a regular file never block, so nothing is lost however slow the reader.
    """

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        token: str,
        line_limit: int,
        stdout: io.FileIO,
    ) -> None:
        super().__init__(proc, line_limit, "local")
        self._token = token
        self._stdout_file = stdout

    @property
    def token(self) -> str:
        """The marker value every process of this command carries."""
        return self._token

    async def stdout_lines(self) -> AsyncIterator[bytes]:
        """Stdout line by line; ``LineTooLongError`` past the line limit."""
        async for line in follow_lines(self._stdout_file, self._proc, self._line_limit):
            yield line

    async def interrupt(self) -> None:
        """SIGINT to the command itself (not its group: it decides what to tell its tools)."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGINT)

    async def _terminate(self, grace_s: float) -> int | None:
        # SIGTERM to the command's group and every marked process, then SIGKILL.
        code = await terminate_tree(self._proc, self._token, grace_s)
        self._stdout_file.close()  # the reader, if any, ends at its next look
        if not self._stderr_task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await asyncio.shield(self._stderr_task)
            self._stderr_task.cancel()
        return code


def _signal_tree(proc: asyncio.subprocess.Process, token: str, sig: int) -> None:
    """Signal the command's group (while its leader lives) and every marked process."""
    if proc.returncode is None:
        # While the leader is unreaped its pid cannot be reused, so the group is ours.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
    signal_all(find_run_processes(token, (proc.pid,)), sig)


async def _gone_by(
    proc: asyncio.subprocess.Process, token: str, deadline: float, resend: int | None = None
) -> bool:
    loop = asyncio.get_running_loop()
    while True:
        left = find_run_processes(token, (proc.pid,))
        if not left and proc.returncode is not None:
            return True
        if loop.time() >= deadline:
            return False
        if resend is not None:
            # A process forked between two sweeps must not survive the kill.
            signal_all(left, resend)
        await asyncio.sleep(_POLL_S)


async def terminate_tree(
    proc: asyncio.subprocess.Process, token: str, grace_s: float
) -> int | None:
    """SIGTERM to ``proc``'s group and every process marked ``token``; after ``grace_s``,
    SIGKILL until none is left (bounded by ``grace_s`` + 2 * ``_KILL_WAIT_S``).

    Also sweeps when ``proc`` itself has already exited: its escaped descendants are what
    outlives it. Returns ``proc``'s exit code (None if it could not be reaped in time).
    """
    loop = asyncio.get_running_loop()
    _signal_tree(proc, token, signal.SIGTERM)
    if not await _gone_by(proc, token, loop.time() + grace_s):
        _signal_tree(proc, token, signal.SIGKILL)
        await _gone_by(proc, token, loop.time() + _KILL_WAIT_S, resend=signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_KILL_WAIT_S):
            await proc.wait()
    _release_pipes(proc)
    return proc.returncode


def _release_pipes(proc: asyncio.subprocess.Process) -> None:
    """Close the child's pipes: lines nobody read by now are dropped.

    ``asyncio.subprocess.Process`` has no public ``close``; its transport closes itself
    only once every pipe reached EOF, which never happens for a stdout the reader stopped
    reading (a line over the cap), and an unclosed transport leaks its pipes.
    """
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()


class LocalWorkspace:
    """Commands run on this host, each in its own session, with exactly the env given."""

    @property
    def name(self) -> str:
        """``local``."""
        return "local"

    async def _start(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        limit: int,
        stdin: int,
        stdout: int = asyncio.subprocess.PIPE,
    ) -> tuple[asyncio.subprocess.Process, str]:
        if not argv:
            raise WorkspaceError("empty command")
        token = uuid.uuid4().hex
        child_env = {**env, RUN_MARKER_VAR: token}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=child_env,
                stdin=stdin,
                stdout=stdout,
                stderr=asyncio.subprocess.PIPE,
                # Its own session: a Ctrl-C at forgeline's terminal does not hit the child
                # behind forgeline's back, and the group can be signalled as a whole.
                start_new_session=True,
                limit=limit,
            )
        except FileNotFoundError as exc:
            # The child reports which path was missing: the directory or the program.
            what = f"directory {cwd!r}" if exc.filename == cwd else f"program {argv[0]!r}"
            raise WorkspaceError(f"cannot start {argv[0]!r}: {what} not found") from exc
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise WorkspaceError(f"cannot start {argv[0]!r} in {cwd!r}: {reason}") from exc
        return proc, token

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        line_limit: int,
        writable: Sequence[str] = (),
    ) -> LocalProcess:
        """Start ``argv`` with stdin on ``/dev/null`` and stdout in an unlinked temporary
        file (see :class:`LocalProcess` for why not a pipe). Unconfined: ``writable`` is
        not enforced."""
        return await self._spawn(argv, cwd=cwd, env=env, line_limit=line_limit, duplex=False)

    async def spawn_duplex(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        line_limit: int,
        writable: Sequence[str] = (),
    ) -> LocalProcess:
        """As :meth:`spawn`, with stdin a pipe that :meth:`LocalProcess.send` writes to."""
        return await self._spawn(argv, cwd=cwd, env=env, line_limit=line_limit, duplex=True)

    async def _spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        line_limit: int,
        duplex: bool,
    ) -> LocalProcess:
        try:
            write_fd, path = tempfile.mkstemp(prefix="forgeline-stdout-")
        except OSError as exc:
            raise WorkspaceError(f"cannot create a stdout file: {exc.strerror or exc}") from exc
        try:
            try:
                reader = io.FileIO(path, "rb")
            finally:
                # Gone from the directory at once; the two handles keep the data alive.
                Path(path).unlink()  # noqa: ASYNC240 - one local unlink, microseconds
            try:
                proc, token = await self._start(
                    argv,
                    cwd=cwd,
                    env=env,
                    limit=line_limit,
                    stdin=asyncio.subprocess.PIPE if duplex else asyncio.subprocess.DEVNULL,
                    stdout=write_fd,
                )
            except BaseException:
                reader.close()
                raise
        finally:
            os.close(write_fd)  # the child has its own copy
        return LocalProcess(proc, token, line_limit, stdout=reader)

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
        """Run to the end; on timeout or cancellation the whole command tree is killed.
        Unconfined: ``writable`` is not enforced."""
        proc, token = await self._start(
            argv,
            cwd=cwd,
            env=env,
            limit=2**16,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(timeout_s):
                out, err = await proc.communicate(stdin)
        except TimeoutError as exc:
            await self._reap(proc, token)
            raise WorkspaceError(
                f"{argv[0]} did not finish within {timeout_s:g} s and was killed"
            ) from exc
        except asyncio.CancelledError:
            await self._reap(proc, token)
            raise
        assert proc.returncode is not None  # noqa: S101 - communicate() waited for it
        return CommandResult(tuple(argv), proc.returncode, out, err)

    @staticmethod
    async def _reap(proc: asyncio.subprocess.Process, token: str) -> None:
        task = asyncio.get_running_loop().create_task(
            terminate_tree(proc, token, 0.5), name=f"kill-{proc.pid}"
        )
        await finish_despite_cancel(task)

    async def ensure_dir(self, path: str) -> None:
        """``mkdir -p`` (mode 0700 for what it creates)."""
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)  # noqa: PTH103 - mode + exist_ok
        except OSError as exc:
            raise WorkspaceError(f"cannot create {path!r}: {exc.strerror or exc}") from exc

    async def kill_processes_in(self, path: str) -> int:
        """SIGKILL the processes working in ``path`` (found through ``/proc/<pid>/cwd``)."""
        pids = processes_in(path)
        signal_all(pids, signal.SIGKILL)
        return len(pids)

    async def list_dir(self, path: str) -> list[str]:
        """``os.listdir``, sorted; empty for a missing directory."""
        try:
            return sorted(os.listdir(path))  # noqa: PTH208 - names only
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise WorkspaceError(f"cannot list {path!r}: {exc.strerror or exc}") from exc
