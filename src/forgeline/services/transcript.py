"""A task's events as plain text: what ``GET /tasks/{id}/log`` serves and ``task log`` prints.

One line per event, ``<time> [<seq>] <type> <what happened>``; text that spans lines (an
assistant's message, a tool's output) continues on lines indented under it, so the
transcript reads top to bottom like a terminal session. Nothing is cut but what the
events themselves cut; nothing is escaped here (the transcript is served as
``text/plain``; whoever shows it on a terminal escapes it there).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from forgeline.domain.agent import (
    AgentEvent,
    AgentResult,
    ErrorData,
    InitData,
    MessageData,
    StatusData,
    ToolResultData,
    ToolUseData,
)
from forgeline.domain.clock import format_time

#: Continuation lines of a multi-line text start with this much space.
_INDENT = " " * 4
#: The input keys that say best what a tool call does, in order of preference.
_TOOL_KEYS = ("command", "file_path", "path", "pattern", "url", "description")


def short(value: str, limit: int = 160) -> str:
    """``value`` on one line (whitespace runs made one space), cut to ``limit`` with "…"."""
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def tool_summary(tool_input: Any) -> str:
    """What a tool call does, in one short line: its command, path or pattern if it has
    one, else its input as JSON."""
    if isinstance(tool_input, dict):
        for key in _TOOL_KEYS:
            if isinstance(tool_input.get(key), str):
                return short(tool_input[key])
    return short(json.dumps(tool_input, default=str))


def describe(event: AgentEvent) -> str:
    """What ``event`` says, as text (more than one line when its text has several)."""
    data = event.data
    match data:
        case InitData():
            said = f"session {event.session_id} · model {data.model} · cwd {data.cwd}"
        case MessageData():
            said = f"{data.role}: {data.text}"
        case ToolUseData():
            said = f"{data.name} {tool_summary(dict(data.input))}"
        case ToolResultData():
            said = ("error: " if data.is_error else "") + (data.output or "(no output)")
        case StatusData():
            attempt = f" (attempt {data.attempt})" if data.attempt is not None else ""
            detail = " ".join(f"{key}={value}" for key, value in data.detail.items())
            said = f"{data.state}{attempt} {detail}".rstrip()
        case ErrorData():
            said = f"{data.kind}: {data.message}"
        case AgentResult():
            said = (
                f"{data.status.value} in {data.duration_ms / 1000:.1f} s · {data.num_turns} turns"
                f" · ${data.cost_usd:.4f} · session {data.session_id}"
            )
            if data.text:
                said += f"\n{data.text}"
    return said


def transcript(events: Iterable[AgentEvent]) -> str:
    """The events as plain text, one entry per event, ending with a newline."""
    lines: list[str] = []
    for event in events:
        first, *more = describe(event).splitlines() or [""]
        lines.append(f"{format_time(event.time)} [{event.seq}] {event.type:<11} {first}")
        lines.extend(_INDENT + line for line in more)
    return "".join(line + "\n" for line in lines)
