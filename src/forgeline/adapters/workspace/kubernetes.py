"""The kubernetes workspace: commands run in a configured pod through ``kubectl exec``.

How a command is started: ``kubectl [--context C] --namespace N exec -i POD [-c CONTAINER]
-- sh -c 'IFS= read -r line && eval "$line"'``, and the first line written to its stdin is
a shell script (:func:`script_line`, :func:`follow_script_line`) that changes directory and
runs ``env -i <the explicit environment> <argv>``. The environment (credentials included)
thus travels over the exec stream, never in an argv that ``ps`` would show on either side.
The command gets ``/dev/null`` as stdin (an open, idle stdin costs the Claude CLI 3 s a
run), unless :meth:`KubernetesWorkspace.run` was given stdin data, which then follows the
script line, or it was started with :meth:`KubernetesWorkspace.spawn_duplex`, whose stdin
is the rest of the stream (an ACP agent's side of the conversation). A streamed command
(:meth:`KubernetesWorkspace.spawn`) writes its stdout to a file in the pod that the script
copies out as it grows.

How it is stopped: killing ``kubectl`` leaves the command running in the pod, so signals
are delivered *inside* the pod by a second ``kubectl exec`` running :data:`_SIGNAL_SCRIPT`:
SIGINT to the recorded pid; SIGTERM, then SIGKILL, to every process whose environment
carries the run's marker (see ``proctree`` for why an environment marker: it survives
``setsid``, which the Claude Bash tool uses for each command).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

from forgeline.adapters._aio import finish_despite_cancel
from forgeline.adapters.workspace.local import (
    ChildProcess,
    read_lines,
    terminate_tree,
)
from forgeline.domain.errors import WorkspaceError
from forgeline.ports.workspace import RUN_MARKER_VAR, CommandResult

if TYPE_CHECKING:
    from forgeline.settings import Settings

#: Reads the script line from stdin and runs it; the rest of stdin is left to the command.
_READER = 'IFS= read -r line && eval "$line"'
#: Where, in the pod, the pid of each running command is recorded.
_PID_DIR = "${TMPDIR:-/tmp}/.forgeline-runs"

#: Signals the processes of one run inside the pod: ``$1`` token, ``$2`` mode (``root``:
#: SIGINT to the command itself; ``sweep``: TERM, ``$3`` tenths of a second, then KILL to
#: every marked process). Exit 0 once nothing marked is left. POSIX sh, procfs, and grep
#: (``-z`` when it has it, one ``tr | grep`` per process otherwise).
_SIGNAL_SCRIPT = r"""
tok=$1; mode=$2; tenths=${3:-10}
needle="FORGELINE_RUN_TOKEN=$tok"
pidfile="${TMPDIR:-/tmp}/.forgeline-runs/$tok.pid"
if printf 'a\0' | grep -qzxF a 2>/dev/null; then
  marked() { grep -lzxF "$needle" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3; }
else
  marked() {
    for d in /proc/[0-9]*; do
      tr '\0' '\n' < "$d/environ" 2>/dev/null | grep -qxF "$needle" && echo "${d#/proc/}"
    done
  }
fi
if [ "$mode" = root ]; then
  pid=$(cat "$pidfile" 2>/dev/null) || exit 0
  if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qxF "$needle"; then
    kill -s INT "$pid" 2>/dev/null
  fi
  exit 0
fi
for p in $(marked); do kill -s TERM "$p" 2>/dev/null; done
i=0
while [ -n "$(marked)" ] && [ "$i" -lt "$tenths" ]; do sleep 0.1; i=$((i + 1)); done
i=0
while [ -n "$(marked)" ] && [ "$i" -lt 20 ]; do
  for p in $(marked); do kill -s KILL "$p" 2>/dev/null; done
  sleep 0.1; i=$((i + 1))
done
rm -f "$pidfile"
[ -z "$(marked)" ]
"""


def _word(value: str) -> str:
    """Quote ``value`` as one sh word that fits on one line (newlines via ``$NL``)."""
    if "\n" not in value:
        return shlex.quote(value)
    return "'" + value.replace("'", "'\\''").replace("\n", "'\"$NL\"'") + "'"


def _env_and_command(argv: Sequence[str], env: Mapping[str, str], token: str) -> str:
    assignments = " ".join(
        _word(f"{key}={value}") for key, value in {**env, RUN_MARKER_VAR: token}.items()
    )
    return f"env -i {assignments} " + " ".join(_word(arg) for arg in argv)


_NEWLINE = "NL=$(printf '\\nx'); NL=${NL%x}; "


def script_line(
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    token: str,
    stdin_from_stream: bool,
) -> str:
    """The one-line script for a short command: ``exec`` it with exactly ``env`` in ``cwd``
    (stdin: the rest of the exec stream, or ``/dev/null``)."""
    redirect = "" if stdin_from_stream else " </dev/null"
    return (
        f"{_NEWLINE}cd {_word(cwd)} || exit 127; "
        f"exec {_env_and_command(argv, env, token)}{redirect}\n"
    )


def follow_script_line(
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    token: str,
    stdin_from_stream: bool = False,
) -> str:
    """The one-line script for a streamed command (the agent CLI); its stdin is the rest of
    the exec stream when ``stdin_from_stream`` (a conversation over stdio, ACP), else
    ``/dev/null``.

    Inside the pod the command writes stdout to a file, and a background loop copies what
    is new to the exec stream until the command has ended — for the same reason as the
    local workspace's file-backed stdout: the Claude CLI drops output queued on a full pipe
    when it exits, and between the pod and forgeline a container runtime, an API server and
    kubectl may each fall behind for a moment. The command itself runs in the foreground
    (a background job of a non-interactive shell would ignore SIGINT, the polite stop),
    through ``sh -c 'echo $$ > pidfile; exec …'`` so its pid is known for
    :meth:`KubectlProcess.interrupt`. The script exits with the command's exit code and
    removes its files.
    """
    run = f"{_PID_DIR}/{token}"
    # An asynchronous list of a non-interactive shell reads /dev/null, so only the command
    # reads the stream: the copy loop started below cannot take its input.
    redirect = "" if stdin_from_stream else " </dev/null"
    return (
        f'{_NEWLINE}mkdir -p "{_PID_DIR}" || exit 126; f="{run}.out"; '
        ': > "$f" || exit 126; rm -f "$f.done"; '
        f"cd {_word(cwd)} || exit 127; "
        # From here the shell's own words ("Terminated" when the command is killed) go to
        # /dev/null: if kubectl is gone, writing them would kill this shell with SIGPIPE
        # before it cleans up. The command's stderr is the real one, kept as fd 3 and put
        # back by the inner shell (dash applies a foreground command's redirections in the
        # parent while it waits, so a "2>&3" there would send the words to fd 3 again).
        "exec 3>&2 2>/dev/null; "
        # The copy loop carries the run's marker, so the final sweep ends it too.
        f"env {RUN_MARKER_VAR}={token} sh -c {_word(_FOLLOW_LOOP)} forgeline-follow "
        '"$f" $$ 3>&- & w=$!; '
        f'sh -c \'echo $$ > "$0"; exec "$@" 2>&3 3>&-\' "{run}.pid" '
        f'{_env_and_command(argv, env, token)}{redirect} >"$f"; r=$?; '
        ': > "$f.done"; wait "$w"; '
        f'rm -f "$f" "$f.done" "{run}.pid"; exit $r\n'
    )


#: Copies what is new in file ``$1`` to stdout until ``$1.done`` exists or the shell
#: ``$2`` that started it is gone; polls every 0.05 s, every 0.2 s after 1 s of quiet.
_FOLLOW_LOOP = (
    "f=$1; p=$2; o=0; q=0; while :; do "
    'if [ -e "$f.done" ] || ! kill -0 "$p" 2>/dev/null; then d=1; else d=0; fi; '
    's=$(wc -c < "$f"); '
    'if [ "$s" -gt "$o" ]; then tail -c +$((o + 1)) "$f" | head -c $((s - o)); o=$s; q=0; '
    "else q=$((q + 1)); fi; "
    '[ "$d" = 1 ] && break; '
    'if [ "$q" -lt 20 ]; then sleep 0.05; else sleep 0.2; fi; '
    "done"
)


#: SIGKILLs the processes whose working directory is ``$1`` or below, printing their pids
#: (the script's own shell works in ``/``).
_KILL_IN_SCRIPT = (
    'for p in /proc/[0-9]*; do c=$(readlink "$p/cwd" 2>/dev/null) || continue; '
    'case "$c" in "$1"|"$1"/*) kill -KILL "${p#/proc/}" 2>/dev/null && echo "${p#/proc/}";; '
    "esac; done; exit 0"
)

#: Prints the entry names of directory ``$1``, NUL-terminated; nothing when it is missing.
_LIST_SCRIPT = (
    'cd "$1" 2>/dev/null || exit 0; '
    'for f in * .[!.]* ..?*; do [ -e "$f" ] || [ -L "$f" ] && printf "%s\\0" "$f"; done; '
    "exit 0"
)


class KubectlProcess(ChildProcess):
    """A command running in the pod, seen through the local ``kubectl exec`` process."""

    def __init__(
        self,
        workspace: KubernetesWorkspace,
        proc: asyncio.subprocess.Process,
        local_token: str,
        token: str,
        line_limit: int,
    ) -> None:
        super().__init__(proc, line_limit, "kubectl")
        self._ws = workspace
        self._local_token = local_token
        self._token = token

    async def stdout_lines(self) -> AsyncIterator[bytes]:
        """The remote command's stdout, line by line."""
        assert self._proc.stdout is not None  # noqa: S101 - always piped
        async for line in read_lines(self._proc.stdout, self._line_limit):
            yield line

    async def interrupt(self) -> None:
        """SIGINT to the command inside the pod (kubectl does not forward signals)."""
        if self._proc.returncode is None:
            await self._ws.signal_in_pod(self._token, "root", timeout_s=1.5)

    async def _terminate(self, grace_s: float) -> int | None:
        # Every marked process in the pod first, then the local ``kubectl``.
        # Budget (the port's 5 s for a whole cancel): the in-pod sweep gets grace + 1.5 s,
        # kubectl 0.5 s to notice, then the local side is killed regardless.
        tenths = max(1, round(grace_s * 10))
        await self._ws.signal_in_pod(self._token, "sweep", tenths, timeout_s=grace_s + 1.5)
        # With the command gone, kubectl ends by itself; if the pod is unreachable it may
        # not, and then only the local side can be cleaned up.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await self._proc.wait()
        await terminate_tree(self._proc, self._local_token, 0.2)
        if not self._stderr_task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await asyncio.shield(self._stderr_task)
            self._stderr_task.cancel()
        return self._proc.returncode


class KubernetesWorkspace:
    """Runs commands in one pod (and container) through ``kubectl exec``."""

    def __init__(
        self,
        *,
        pod: str,
        namespace: str = "default",
        container: str | None = None,
        context: str | None = None,
        kubectl: str = "kubectl",
        kubectl_env: Mapping[str, str] | None = None,
    ) -> None:
        self._pod = pod
        self._namespace = namespace
        self._container = container
        self._context = context
        self._kubectl = kubectl
        # kubectl's own environment (KUBECONFIG, HOME for ~/.kube, PATH for auth plugins).
        self._kubectl_env = dict(kubectl_env or {})

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str]) -> KubernetesWorkspace:
        """Configured from ``kubectl_bin``, ``kube_context``, ``kube_namespace``,
        ``kube_pod`` and ``kube_container``; kubectl sees ``KUBECONFIG``, ``HOME`` and
        ``PATH`` of ``environ``."""
        if not settings.kube_pod:
            from forgeline.domain.errors import ConfigurationError

            raise ConfigurationError("FORGELINE_WORKSPACE=kubernetes needs FORGELINE_KUBE_POD")
        keep = ("PATH", "HOME", "KUBECONFIG", "LANG")
        return cls(
            pod=settings.kube_pod,
            namespace=settings.kube_namespace,
            container=settings.kube_container,
            context=settings.kube_context,
            kubectl=settings.kubectl_bin,
            kubectl_env={k: environ[k] for k in keep if k in environ},
        )

    @property
    def name(self) -> str:
        """``kubernetes``."""
        return "kubernetes"

    def exec_argv(self, command: Sequence[str], *, stdin: bool) -> list[str]:
        """The ``kubectl exec`` command line for ``command`` in the configured pod."""
        argv = [self._kubectl]
        if self._context:
            argv += ["--context", self._context]
        argv += ["--namespace", self._namespace, "exec"]
        if stdin:
            argv.append("-i")
        argv.append(self._pod)
        if self._container:
            argv += ["-c", self._container]
        return [*argv, "--", *command]

    async def _start(
        self, command: Sequence[str], *, stdin: bool, limit: int
    ) -> tuple[asyncio.subprocess.Process, str]:
        token = uuid.uuid4().hex
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.exec_argv(command, stdin=stdin),
                env={**self._kubectl_env, RUN_MARKER_VAR: token},
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                limit=limit,
            )
        except OSError as exc:
            reason = "not found" if isinstance(exc, FileNotFoundError) else exc.strerror
            raise WorkspaceError(f"cannot start {self._kubectl!r}: {reason}") from exc
        return proc, token

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        line_limit: int,
        writable: Sequence[str] = (),
    ) -> KubectlProcess:
        """Start ``argv`` in the pod; its stdin is ``/dev/null`` there. The pod is the
        sandbox: ``writable`` is not enforced inside it."""
        return await self._spawn(argv, cwd=cwd, env=env, line_limit=line_limit, duplex=False)

    async def spawn_duplex(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        line_limit: int,
        writable: Sequence[str] = (),
    ) -> KubectlProcess:
        """As :meth:`spawn`, with the command's stdin the exec stream after the script line
        (what :meth:`KubectlProcess.send` writes)."""
        return await self._spawn(argv, cwd=cwd, env=env, line_limit=line_limit, duplex=True)

    async def _spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        line_limit: int,
        duplex: bool,
    ) -> KubectlProcess:
        if not argv:
            raise WorkspaceError("empty command")
        proc, local_token = await self._start(["sh", "-c", _READER], stdin=True, limit=line_limit)
        token = uuid.uuid4().hex
        line = follow_script_line(argv, cwd=cwd, env=env, token=token, stdin_from_stream=duplex)
        assert proc.stdin is not None  # noqa: S101 - piped above
        try:
            proc.stdin.write(line.encode())
            await proc.stdin.drain()
            if not duplex:
                proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError) as exc:
            await terminate_tree(proc, local_token, 0.2)
            raise WorkspaceError(f"kubectl exec into {self._pod!r} failed at start") from exc
        return KubectlProcess(self, proc, local_token, token, line_limit)

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
        """Run ``argv`` in the pod to its end; on timeout or cancellation kill it there.
        ``writable`` is not enforced (the pod is the sandbox)."""
        if not argv:
            raise WorkspaceError("empty command")
        proc, local_token = await self._start(["sh", "-c", _READER], stdin=True, limit=2**16)
        token = uuid.uuid4().hex
        line = script_line(
            argv,
            cwd=cwd,
            env=env,
            token=token,
            stdin_from_stream=stdin is not None,
        )
        try:
            async with asyncio.timeout(timeout_s):
                out, err = await proc.communicate(line.encode() + (stdin or b""))
        except TimeoutError as exc:
            await self._reap(proc, local_token, token)
            raise WorkspaceError(
                f"{argv[0]} did not finish within {timeout_s:g} s in pod {self._pod!r}"
            ) from exc
        except asyncio.CancelledError:
            await self._reap(proc, local_token, token)
            raise
        assert proc.returncode is not None  # noqa: S101 - communicate() waited for it
        return CommandResult(tuple(argv), proc.returncode, out, err)

    async def _reap(self, proc: asyncio.subprocess.Process, local_token: str, token: str) -> None:
        async def reap() -> None:
            await self.signal_in_pod(token, "sweep", 5, timeout_s=3.0)
            await terminate_tree(proc, local_token, 0.2)

        await finish_despite_cancel(
            asyncio.get_running_loop().create_task(reap(), name=f"kubectl-reap-{proc.pid}")
        )

    async def signal_in_pod(
        self, token: str, mode: str, tenths: int = 10, *, timeout_s: float
    ) -> bool:
        """Run :data:`_SIGNAL_SCRIPT` in the pod; True when it reports nothing left.

        Never raises: a pod that cannot be reached is reported by the return value (and the
        caller still cleans up the local side).
        """
        argv = self.exec_argv(
            ["sh", "-c", _SIGNAL_SCRIPT, "forgeline-signal", token, mode, str(tenths)],
            stdin=False,
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=self._kubectl_env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            return False
        try:
            async with asyncio.timeout(timeout_s):
                return await proc.wait() == 0
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            return False
        except asyncio.CancelledError:
            # Only the local kubectl is ended; the script in the pod is bounded and
            # idempotent, and asyncio reaps the killed child.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise

    async def ensure_dir(self, path: str) -> None:
        """``mkdir -p`` in the pod."""
        result = await self.run(
            ["mkdir", "-p", "-m", "700", path], cwd="/", env={"PATH": "/usr/bin:/bin"}, timeout_s=30
        )
        if not result.ok:
            raise WorkspaceError(
                f"cannot create {path!r} in pod {self._pod!r}: {result.stderr_tail(3)}"
            )

    async def kill_processes_in(self, path: str) -> int:
        """SIGKILL, in the pod, the processes whose cwd is ``path`` or below it."""
        out = await self._script(_KILL_IN_SCRIPT, path, doing=f"end the processes in {path!r}")
        return len(out.split())

    async def list_dir(self, path: str) -> list[str]:
        """The entries of ``path`` in the pod (a POSIX sh glob; hidden names too)."""
        out = await self._script(_LIST_SCRIPT, path, doing=f"list {path!r}")
        return sorted(name for name in out.decode(errors="replace").split("\0") if name)

    async def _script(self, script: str, *args: str, doing: str) -> bytes:
        """Run one of this module's sh scripts in the pod; its stdout, or ``WorkspaceError``."""
        result = await self.run(
            ["sh", "-c", script, "forgeline", *args],
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            timeout_s=30,
        )
        if not result.ok:
            raise WorkspaceError(f"cannot {doing} in pod {self._pod!r}: {result.stderr_tail(3)}")
        return result.stdout
