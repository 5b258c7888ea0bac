"""The kubernetes workspace through a fake ``kubectl`` that takes real kubectl's argv.

The fake (``tests/support/fake_kubectl``) runs the command on this host as if it were the
pod, and — like real kubectl — leaves it running when kubectl itself is killed, so these
tests prove the in-pod signalling path.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from forgeline.adapters.workspace import build_workspace
from forgeline.adapters.workspace.kubernetes import (
    KubernetesWorkspace,
    follow_script_line,
    script_line,
)
from forgeline.adapters.workspace.local import LocalWorkspace
from forgeline.domain.errors import ConfigurationError, WorkspaceError
from forgeline.ports.workspace import RUN_MARKER_VAR, Workspace
from forgeline.settings import Settings

FAKE_KUBECTL = Path(__file__).resolve().parents[1] / "support" / "fake_kubectl"
ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture
def kubectl_log(tmp_path: Path) -> Path:
    """The file where the fake kubectl records each invocation's argv."""
    return tmp_path / "kubectl.log"


@pytest.fixture
def workspace(kubectl_log: Path) -> KubernetesWorkspace:
    """A workspace for pod ``web-0``/container ``agent`` in ``builds`` of context ``ci``."""
    expect = {"context": "ci", "namespace": "builds", "pod": "web-0", "container": "agent"}
    return KubernetesWorkspace(
        pod="web-0",
        namespace="builds",
        container="agent",
        context="ci",
        kubectl=str(FAKE_KUBECTL),
        kubectl_env={
            "PATH": os.environ["PATH"],
            "FAKE_KUBECTL_LOG": str(kubectl_log),
            "FAKE_KUBECTL_EXPECT": json.dumps(expect),
        },
    )


def invocations(log: Path) -> list[list[str]]:
    """Every argv the fake kubectl received."""
    return [json.loads(line) for line in log.read_text().splitlines()]


def live(pattern: str) -> list[str]:
    """``ps`` lines naming ``pattern`` whose process is not a zombie."""
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True, text=True, check=True
    ).stdout
    return [
        line
        for line in out.splitlines()
        if pattern in line and line.split(None, 2)[1][0] != "Z" and "ps -ww -eo" not in line
    ]


async def until(predicate: object, within: float = 5.0) -> bool:
    """Poll ``predicate()`` (processes have no event to await) until true or ``within``."""
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not predicate():
        if loop.time() >= end:
            return False
        await asyncio.sleep(0.05)
    return True


def unique_sleep() -> str:
    """A ``sleep`` argument no other process on the machine uses."""
    return f"{40 + uuid.uuid4().int % 50}.{uuid.uuid4().int % 10**6:06d}"


def test_implements_the_port(workspace: KubernetesWorkspace) -> None:
    """KubernetesWorkspace satisfies the Workspace protocol."""
    assert isinstance(workspace, Workspace)


async def test_run_argv_env_cwd_stdin(
    workspace: KubernetesWorkspace, kubectl_log: Path, tmp_path: Path
) -> None:
    """run(): kubectl's argv as kubectl takes it, exact env (even odd values), cwd, stdin."""
    secret = "s3cret-value-123"
    result = await workspace.run(
        ["sh", "-c", "env -0; printf '\\0--\\0'; printf '%s|' \"$ODD\"; pwd; cat"],
        cwd=str(tmp_path),
        env={**ENV, "TOKEN": secret, "ODD": 'it\'s "two"\nlines $HOME `x`'},
        timeout_s=20,
        stdin=b"from stdin\n",
    )
    assert result.ok, result.stderr
    env_part, _, rest = result.stdout.partition(b"\0--\0")
    env = dict(item.split("=", 1) for item in env_part.decode().split("\0") if item)
    # PWD is the inner shell's own; nothing of the "pod" environment came through.
    assert set(env) - {"PWD"} == {"PATH", "TOKEN", "ODD", RUN_MARKER_VAR}
    assert env["ODD"] == 'it\'s "two"\nlines $HOME `x`'
    out = rest.decode()
    assert out.startswith('it\'s "two"\nlines $HOME `x`|')
    assert out.endswith(f"{tmp_path}\nfrom stdin\n")
    (argv,) = invocations(kubectl_log)
    assert argv[:12] == [
        "--context", "ci", "--namespace", "builds", "exec", "-i", "web-0", "-c", "agent",
        "--", "sh", "-c",
    ]  # fmt: skip
    assert len(argv) == 13
    assert secret not in json.dumps(argv)


async def test_run_reports_the_remote_exit_code(
    workspace: KubernetesWorkspace, tmp_path: Path
) -> None:
    """A command exiting 3 in the pod gives exit code 3, as kubectl reports it."""
    before = pid_files()
    result = await workspace.run(["sh", "-c", "exit 3"], cwd="/", env=ENV, timeout_s=20)
    assert result.exit_code == 3
    assert pid_files() == before, "short commands leave no pid file in the pod"
    assert "command terminated with exit code 3" in result.stderr_tail()
    missing = await workspace.run(["true"], cwd=str(tmp_path / "nope"), env=ENV, timeout_s=20)
    assert missing.exit_code == 127


async def test_wrong_pod_or_missing_kubectl(workspace: KubernetesWorkspace, tmp_path: Path) -> None:
    """A pod kubectl cannot find fails the command; a missing kubectl is a WorkspaceError."""
    other = KubernetesWorkspace(
        pod="ghost",
        namespace="builds",
        container="agent",
        context="ci",
        kubectl=str(FAKE_KUBECTL),
        kubectl_env={
            "PATH": os.environ["PATH"],
            "FAKE_KUBECTL_EXPECT": json.dumps({"pod": "web-0"}),
        },
    )
    result = await other.run(["true"], cwd="/", env=ENV, timeout_s=20)
    assert result.exit_code == 1
    assert 'pods "ghost" not found' in result.stderr_tail()
    nowhere = KubernetesWorkspace(pod="p", kubectl=str(tmp_path / "kubectl"))
    with pytest.raises(WorkspaceError, match="not found"):
        await nowhere.run(["true"], cwd="/", env=ENV, timeout_s=5)


async def test_spawn_streams_lines_with_a_closed_stdin(
    workspace: KubernetesWorkspace, tmp_path: Path
) -> None:
    """spawn(): stdout line by line; the command's stdin in the pod is /dev/null."""
    before = pid_files()
    proc = await workspace.spawn(
        ["sh", "-c", "echo one; readlink /proc/self/fd/0; cat; echo oops >&2; echo two"],
        cwd=str(tmp_path),
        env=ENV,
        line_limit=1 << 20,
    )
    lines = [line async for line in proc.stdout_lines()]
    assert lines == [b"one", b"/dev/null", b"two"]
    assert await proc.wait() == 0
    assert await proc.kill() == 0
    assert proc.stderr_tail() == "oops"
    assert pid_files() == before, "the script removes its files"


def pid_files() -> set[str]:
    """The pid files the workspace keeps in the (fake) pod, other than stale ones."""
    root = Path("/tmp/.forgeline-runs")
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


async def test_killing_kubectl_alone_leaves_the_pod_process_and_kill_ends_it(
    workspace: KubernetesWorkspace, kubectl_log: Path, tmp_path: Path
) -> None:
    """The in-pod kill path: kubectl's death leaves the command; kill() ends it and its
    setsid'ed children inside the pod, within the port's bound."""
    seconds = unique_sleep()
    before = pid_files()
    proc = await workspace.spawn(
        ["sh", "-c", f"setsid sleep {seconds} & echo up; sleep {seconds}"],
        cwd=str(tmp_path),
        env=ENV,
        line_limit=1 << 20,
    )
    lines = proc.stdout_lines()
    assert await anext(lines) == b"up"
    assert await until(lambda: len(live(f"sleep {seconds}")) == 3)  # sh + 2 sleeps
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)  # what a crashed worker would do to kubectl
    await proc.wait()
    assert len(live(f"sleep {seconds}")) == 3, "the pod processes outlive kubectl"
    loop = asyncio.get_running_loop()
    start = loop.time()
    await proc.kill(grace_s=0.5)
    assert loop.time() - start < 5
    assert live(f"sleep {seconds}") == []
    assert await until(lambda: pid_files() == before), "the script cleans up after itself"
    sweep = invocations(kubectl_log)[-1]
    assert sweep[:9] == [
        "--context", "ci", "--namespace", "builds", "exec", "web-0", "-c", "agent", "--",
    ]  # fmt: skip
    assert "sweep" in sweep


async def test_interrupt_delivers_sigint_inside_the_pod(
    workspace: KubernetesWorkspace, tmp_path: Path
) -> None:
    """interrupt(): the command itself gets SIGINT in the pod and can end cleanly."""
    proc = await workspace.spawn(
        ["sh", "-c", "trap 'echo got-int; exit 0' INT; echo ready; while :; do sleep 0.1; done"],
        cwd=str(tmp_path),
        env=ENV,
        line_limit=1 << 20,
    )
    lines = proc.stdout_lines()
    assert await anext(lines) == b"ready"
    await proc.interrupt()

    async def rest() -> list[bytes]:
        return [line async for line in lines]

    assert await asyncio.wait_for(rest(), 10) == [b"got-int"]
    assert await proc.wait() == 0
    await proc.kill()


async def test_run_timeout_kills_inside_the_pod(
    workspace: KubernetesWorkspace, tmp_path: Path
) -> None:
    """A command over its timeout is killed in the pod, not only kubectl."""
    seconds = unique_sleep()
    with pytest.raises(WorkspaceError, match="did not finish"):
        await workspace.run(["sleep", seconds], cwd="/", env=ENV, timeout_s=1)
    assert await until(lambda: not live(f"sleep {seconds}"), within=3)


async def test_ensure_dir_in_the_pod(workspace: KubernetesWorkspace, tmp_path: Path) -> None:
    """ensure_dir runs mkdir -p in the pod."""
    target = tmp_path / "x" / "y"
    await workspace.ensure_dir(str(target))
    assert target.is_dir()
    (tmp_path / "f").write_text("")
    with pytest.raises(WorkspaceError, match="cannot create"):
        await workspace.ensure_dir(str(tmp_path / "f" / "z"))


def test_script_line_is_one_line_with_the_marker() -> None:
    """The script sent over stdin is a single line and carries the run marker."""
    line = script_line(
        ["claude", "-p", "a\nb"], cwd="/w", env={"K": "v\nw"}, token="t0k", stdin_from_stream=False
    )
    assert line.count("\n") == 1
    assert line.endswith("</dev/null\n")
    assert f"{RUN_MARKER_VAR}=t0k" in line
    follow = follow_script_line(["claude", "-p", "a\nb"], cwd="/w", env={"K": "v\nw"}, token="t")
    assert follow.count("\n") == 1
    assert f"{RUN_MARKER_VAR}=t" in follow


def test_build_workspace_from_settings(tmp_path: Path) -> None:
    """The factory: local by default; kubernetes from the kube_* settings, pod required."""
    assert isinstance(build_workspace(Settings(data_dir=tmp_path)), LocalWorkspace)
    with pytest.raises(ConfigurationError, match="KUBE_POD"):
        build_workspace(Settings(data_dir=tmp_path, workspace="kubernetes"))
    ws = build_workspace(
        Settings(
            data_dir=tmp_path,
            workspace="kubernetes",
            kube_pod="web-0",
            kube_namespace="builds",
            kube_context="ci",
            kube_container="agent",
            kubectl_bin="/opt/kubectl",
        ),
        environ={"KUBECONFIG": "/k", "SECRET": "x"},
    )
    assert isinstance(ws, KubernetesWorkspace)
    assert ws.exec_argv(["true"], stdin=False) == [
        "/opt/kubectl", "--context", "ci", "--namespace", "builds", "exec", "web-0",
        "-c", "agent", "--", "true",
    ]  # fmt: skip


async def test_list_dir_and_kill_processes_in_a_directory_in_the_pod(
    workspace: KubernetesWorkspace, tmp_path: Path
) -> None:
    """What a dead worker left in an attempt's checkout is found by its working directory
    and killed inside the pod (killing kubectl would not reach it); listing a directory in
    the pod shows hidden names too and an empty list for a missing one."""
    stale = tmp_path / "checkouts" / "p" / "task.3"
    (stale / "sub").mkdir(parents=True)
    (stale / ".hidden").write_text("x")
    assert await workspace.list_dir(str(stale)) == [".hidden", "sub"]
    assert await workspace.list_dir(str(tmp_path / "missing")) == []
    sleep = f"{30 + uuid.uuid4().int % 30}.{uuid.uuid4().int % 10**6:06d}"
    orphan = subprocess.Popen(  # noqa: ASYNC220 - a stand-in for an orphaned tool command
        ["sleep", sleep], cwd=stale / "sub", start_new_session=True
    )
    try:
        assert await workspace.kill_processes_in(str(stale)) == 1
        assert await asyncio.wait_for(asyncio.to_thread(orphan.wait), 5) == -signal.SIGKILL
        assert await workspace.kill_processes_in(str(stale)) == 0
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


async def test_spawn_duplex_converses_through_the_exec_stream(
    workspace: KubernetesWorkspace, tmp_path: Path
) -> None:
    """spawn_duplex: after the script line the exec stream is the command's stdin."""
    from tests.support.duplex import converse

    await converse(workspace, str(tmp_path), ENV)
