"""Availability checks shared by the agent adapters: is the program there, which version."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from dataclasses import dataclass

from forgeline.domain.agent import DEFAULT_AVAILABILITY_TIMEOUT


@dataclass(frozen=True, slots=True)
class BinaryProbe:
    """The outcome of running ``<binary> --version``."""

    available: bool
    version: str | None
    detail: str | None


async def probe_binary(
    binary: str, *, timeout_s: float = DEFAULT_AVAILABILITY_TIMEOUT
) -> BinaryProbe:
    """Run ``binary --version`` with a closed stdin, bounded by ``timeout_s``; never raises.

    A program that is on PATH but cannot answer (the npm stub left by ``--ignore-scripts``
    exits 1) counts as unavailable, with its own words as the detail.
    """
    path = shutil.which(binary)
    if path is None:
        return BinaryProbe(False, None, f"{binary!r} not found on PATH")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    env.update(DISABLE_AUTOUPDATER="1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return BinaryProbe(False, None, f"{path}: {exc.strerror or exc}")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return BinaryProbe(False, None, f"{path} --version did not answer within {timeout_s:g} s")
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace").strip()
    if proc.returncode != 0:
        reason = (err.decode(errors="replace").strip() or text)[:300]
        return BinaryProbe(False, None, f"{path} --version exited {proc.returncode}: {reason}")
    return BinaryProbe(True, text.split()[0] if text else None, path)
