"""A stand-in for ``claude`` only for what the real CLI cannot be made to print.

Everything the real CLI can do is tested with the real CLI. This script covers the rest:
garbage lines, truncated JSON, a line over the reader's cap, an exit without a ``result``
line, and a process that ignores SIGINT and SIGTERM. It is run as
``python fake_claude.py <mode> [claude's own arguments…]`` through a wrapper written by
:func:`install`; it records its argv and environment to ``$FAKE_CLAUDE_RECORD`` if set.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

SESSION = "11111111-2222-4333-8444-555555555555"


def _line(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _init() -> None:
    _line(
        {
            "type": "system",
            "subtype": "init",
            "cwd": str(Path.cwd()),
            "session_id": SESSION,
            "tools": ["Bash", "Write"],
            "model": "fake-model",
        }
    )


def _result(text: str = "done", *, is_error: bool = False) -> None:
    _line(
        {
            "type": "result",
            "subtype": "success",
            "is_error": is_error,
            "num_turns": 1,
            "result": text,
            "session_id": SESSION,
            "total_cost_usd": 0.5,
            "usage": {"input_tokens": 10, "output_tokens": 5},
        }
    )


def main() -> None:
    """Play the mode named by the first argument."""
    mode = sys.argv[1]
    record = os.environ.get("FAKE_CLAUDE_RECORD")
    if record:
        Path(record).write_text(json.dumps({"argv": sys.argv[2:], "env": dict(os.environ)}))
    if mode == "garbage":
        _init()
        sys.stdout.write("this is not json\n")
        sys.stdout.write('{"type": "assistant", "message": {"content": [\n')  # truncated
        sys.stdout.write("[1, 2, 3]\n\n")
        _line({"type": "brand_new_event", "session_id": SESSION})
        _line({"type": "system", "subtype": "brand_new_subtype", "session_id": SESSION})
        _line(
            {
                "type": "assistant",
                "session_id": SESSION,
                "message": {"content": [{"type": "text", "text": "still here"}]},
            }
        )
        _result()
    elif mode == "truncated":
        _init()
        sys.stdout.write('{"type": "assistant", "message": {"content": [{"type": "te')
        sys.stdout.flush()
        sys.stderr.write("Error: the process broke mid-line\n")
        sys.exit(2)
    elif mode == "huge":
        _init()
        size = int(os.environ.get("FAKE_CLAUDE_SIZE", str(1024 * 1024)))
        chunk = b"x" * 65536
        out = sys.stdout.buffer
        out.write(b'{"type": "assistant", "pad": "')
        for _ in range(size // len(chunk) + 1):
            out.write(chunk)
        out.flush()
        time.sleep(60)  # never finish the line: the reader must not wait for it
    elif mode == "noresult":
        _init()
        sys.stderr.write("starting\nfatal: something broke\n")
        sys.exit(3)
    elif mode == "stubborn":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _init()
        time.sleep(60)
    elif mode == "over-budget":
        _init()
        _result()
    else:
        sys.stderr.write(f"unknown mode {mode}\n")
        sys.exit(64)


def install(directory: Path, mode: str) -> Path:
    """Write an executable ``claude`` wrapper in ``directory`` that plays ``mode``."""
    wrapper = directory / "claude"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {__file__} {mode} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


if __name__ == "__main__":
    main()
