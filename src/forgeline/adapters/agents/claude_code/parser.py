"""From Claude Code's ``stream-json`` lines to forgeline's normalized events.

One line of stdout is one JSON object (``reference/claude-code-cli.md`` §5, §6). The mapping:

=====================  =========================================================
CLI line               normalized event
=====================  =========================================================
``system/init``        ``init`` (model, cwd, tools)
``system/api_retry``   ``status`` ``retrying`` with ``attempt`` (the only output
                       during the CLI's backoff)
``system/status``      ``status`` (e.g. ``requesting``)
``assistant``          one ``message`` or ``tool_use`` per content block; the
                       synthetic line of a failed API call (top-level ``error``)
                       becomes an ``error`` event
``user``               ``tool_result`` per tool result block; text blocks (the
                       interruption markers) become ``message`` with role user
``result``             ``result``: success is decided by ``is_error`` alone (an
                       API failure ends with ``subtype: success, is_error: true``)
=====================  =========================================================

Anything else (``stream_event``, ``system/task_started`` …, types a later CLI adds) is
tolerated and counted in :attr:`StreamJsonParser.unknown`; lines that are not JSON objects
are skipped and counted in :attr:`StreamJsonParser.bad_lines`. The parser never raises on
input.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from forgeline.adapters.agents.jsonl import Verdict, as_int, bounded, decode_line, make_events
from forgeline.domain.agent import (
    TOOL_OUTPUT_LIMIT,
    AgentEvent,
    AgentResult,
    CostSource,
    ErrorData,
    EventData,
    InitData,
    MessageData,
    RunStatus,
    StatusData,
    ToolResultData,
    ToolUseData,
    Usage,
    cut_output,
)

PROVIDER = "claude-code"

#: ``error`` event kinds for the CLI's failed ``result`` subtypes.
_ERROR_KINDS = {
    "error_max_turns": "max_turns",
    "error_max_budget_usd": "budget_exceeded",
    "error_during_execution": "execution_error",
    "success": "api_error",  # is_error with subtype success: the API call failed
}


@dataclass(frozen=True, slots=True)
class CliResult:
    """The CLI's own verdict, from its ``result`` line, with what the result event omits."""

    result: AgentResult
    is_error: bool
    subtype: str
    errors: tuple[str, ...] = ()
    api_error_status: int | None = None
    terminal_reason: str | None = None
    permission_denials: tuple[str, ...] = ()


def _float(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return 0.0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def usage_from(raw: Any) -> Usage:
    """Map the API's usage object to :class:`Usage` (missing fields count as 0)."""
    if not isinstance(raw, Mapping):
        return Usage()
    return Usage(
        input_tokens=as_int(raw.get("input_tokens")),
        output_tokens=as_int(raw.get("output_tokens")),
        cache_read_tokens=as_int(raw.get("cache_read_input_tokens")),
        cache_write_tokens=as_int(raw.get("cache_creation_input_tokens")),
    )


def _tool_output(content: Any) -> str:
    """The text of a tool result's ``content`` (a string or a list of blocks)."""
    if isinstance(content, str):
        return cut_output(content)
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, Mapping):
                if block.get("type") == "text":
                    parts.append(str(block.get("text", "")))
                else:
                    parts.append(f"[{block.get('type', 'block')}]")
        return cut_output("\n".join(parts))
    return ""


def result_from(obj: Mapping[str, Any]) -> CliResult:
    """Build the run's result from a ``result`` line."""
    is_error = obj.get("is_error") is not False
    errors = tuple(str(e) for e in obj.get("errors") or () if e)
    text = _str(obj.get("result"))
    if text is None:
        text = "; ".join(errors)
    denials = tuple(
        str(d.get("tool_name", "?"))
        for d in obj.get("permission_denials") or ()
        if isinstance(d, Mapping)
    )
    status_code = obj.get("api_error_status")
    cost = obj.get("total_cost_usd")
    return CliResult(
        result=AgentResult(
            status=RunStatus.FAILED if is_error else RunStatus.SUCCEEDED,
            text=text,
            session_id=_str(obj.get("session_id")),
            num_turns=as_int(obj.get("num_turns")),
            duration_ms=as_int(obj.get("duration_ms")),
            cost_usd=_float(cost),
            usage=usage_from(obj.get("usage")),
            cost_source=CostSource.NONE if cost is None else CostSource.REPORTED,
        ),
        is_error=is_error,
        subtype=str(obj.get("subtype") or ""),
        errors=errors,
        api_error_status=status_code if isinstance(status_code, int) else None,
        terminal_reason=_str(obj.get("terminal_reason")),
        permission_denials=denials,
    )


class StreamJsonParser:
    """Turns stdout lines of one ``claude -p --output-format stream-json`` run into events.

    Stateful only in what a run accumulates: the session id (on every line; kept from the
    latest), the CLI's result, and counters. ``raw=True`` attaches each line's object to its
    events as ``data.raw`` (the debug setting). Not thread-safe; one parser per run.
    """

    def __init__(self, *, provider: str = PROVIDER, raw: bool = False) -> None:
        self.provider = provider
        self.raw = raw
        self.session_id: str | None = None
        self.model: str | None = None
        self.cli_result: CliResult | None = None
        self.verdict: Verdict | None = None
        self.lines = 0
        self.bad_lines = 0
        self.unknown: Counter[str] = Counter()

    def feed(self, line: bytes | str) -> list[AgentEvent]:
        """The events of one line (often one, sometimes none or several)."""
        obj = decode_line(self, line)
        if obj is None:
            return []
        session = obj.get("session_id")
        if isinstance(session, str) and session:
            self.session_id = session
        kind = obj.get("type")
        datas: list[EventData]
        if kind == "assistant":
            datas = self._assistant(obj, len(line))
        elif kind == "user":
            datas = self._user(obj)
        elif kind == "system":
            datas = self._system(obj)
        elif kind == "result":
            self.cli_result = cli = result_from(obj)
            self.verdict = Verdict(
                result=cli.result,
                is_error=cli.is_error,
                error_kind=_ERROR_KINDS.get(cli.subtype, "agent_error"),
                notes=(
                    (ErrorData("permission_denied", "tool use refused: " + ", ".join(denied)),)
                    if (denied := cli.permission_denials)
                    else ()
                ),
                model=self.model,
            )
            datas = [cli.result]
        else:
            self.unknown[str(kind)] += 1
            return []
        return make_events(self, self.provider, datas, obj, self.raw)

    def _system(self, obj: Mapping[str, Any]) -> list[EventData]:
        subtype = obj.get("subtype")
        if subtype == "init":
            tools = obj.get("tools")
            self.model = _str(obj.get("model"))
            return [
                InitData(
                    model=self.model,
                    cwd=_str(obj.get("cwd")),
                    tools=tuple(str(t) for t in tools) if isinstance(tools, list) else (),
                )
            ]
        if subtype == "api_retry":
            detail = {
                key: obj[key]
                for key in ("max_retries", "retry_delay_ms", "error_status", "error")
                if key in obj
            }
            attempt = obj.get("attempt")
            return [
                StatusData(
                    state="retrying",
                    attempt=attempt if isinstance(attempt, int) else None,
                    detail=detail,
                )
            ]
        if subtype == "status":
            return [StatusData(state=str(obj.get("status") or "status"))]
        self.unknown[f"system/{subtype}"] += 1
        return []

    def _assistant(self, obj: Mapping[str, Any], size: int) -> list[EventData]:
        message = obj.get("message")
        if not isinstance(message, dict):
            self.bad_lines += 1
            return []
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        error = obj.get("error")
        if error:
            # The synthetic message the CLI prints when an API call finally failed: its text
            # is the reason ("API Error: 500 …", "Invalid API key …").
            text = "\n".join(str(b.get("text", "")) for b in blocks if isinstance(b, dict)).strip()
            return [ErrorData(kind=str(error), message=text or str(error))]
        out: list[EventData] = []
        for block in blocks:
            if not isinstance(block, dict):
                continue
            btype = block.get("type")
            if btype == "text":
                text = str(block.get("text", ""))
                if text:
                    out.append(MessageData(role="assistant", text=text))
            elif btype == "tool_use":
                tool_input = block.get("input")
                if not isinstance(tool_input, dict):
                    tool_input = {}
                elif size > TOOL_OUTPUT_LIMIT:
                    # Only a line this large can hold a string over the limit.
                    tool_input = bounded(tool_input)
                out.append(
                    ToolUseData(
                        id=str(block.get("id", "")),
                        name=str(block.get("name", "")),
                        input=tool_input,
                    )
                )
            elif btype in ("thinking", "redacted_thinking"):
                continue
            else:
                self.unknown[f"assistant/{btype}"] += 1
        return out

    def _user(self, obj: Mapping[str, Any]) -> list[EventData]:
        message = obj.get("message")
        if not isinstance(message, dict):
            self.bad_lines += 1
            return []
        content = message.get("content")
        if isinstance(content, str):
            return [MessageData(role="user", text=content)] if content else []
        out: list[EventData] = []
        for block in content if isinstance(content, list) else ():
            if not isinstance(block, dict):
                continue
            btype = block.get("type")
            if btype == "tool_result":
                out.append(
                    ToolResultData(
                        id=str(block.get("tool_use_id", "")),
                        output=_tool_output(block.get("content")),
                        is_error=block.get("is_error") is True,
                    )
                )
            elif btype == "text":
                text = str(block.get("text", ""))
                if text:
                    out.append(MessageData(role="user", text=text))
            else:
                self.unknown[f"user/{btype}"] += 1
        return out
