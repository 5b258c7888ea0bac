"""From ``codex exec --json`` lines to forgeline's normalized events.

One line is one JSON object (``reference/more-agents.md``). The mapping:

=========================================  ================================================
CLI line                                   normalized event
=========================================  ================================================
``thread.started{thread_id}``              ``init`` (the thread id is the session id)
``turn.started``                           ``status`` ``requesting``
``item.started`` of a command, file        ``tool_use`` (name ``command_execution``,
change, MCP call or web search             ``file_change``, ``<server>.<tool>``,
                                           ``web_search``)
``item.completed`` of such an item         ``tool_result`` (preceded by its ``tool_use``
                                           when no ``item.started`` came)
``item.completed`` ``agent_message``       ``message`` (the last one is the result's text)
``item.completed`` ``error``               ``status`` ``warning``: the CLI goes on (it
                                           reports unknown model metadata this way)
``error`` "Reconnecting... N/M (…)"        ``status`` ``retrying`` with ``attempt`` N
other ``error``                            ``error`` ``api_error`` with the message
``turn.completed{usage}``                  the verdict: succeeded, with the usage (which is
                                           cumulative over a resumed thread)
``turn.failed{error}``                     the verdict: failed, with the API's message
=========================================  ================================================

Reasoning, todo lists and types a later CLI adds are tolerated and counted in
:attr:`CodexParser.unknown`; the parser never raises on input.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
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

PROVIDER = "codex"

_RECONNECTING = re.compile(r"Reconnecting\.\.\. (\d+)/(\d+)")
#: Item types that are tool calls, with the fields their ``tool_use`` input shows.
_TOOL_INPUT = {
    "command_execution": ("command",),
    "file_change": ("changes",),
    "mcp_tool_call": ("server", "tool", "arguments"),
    "web_search": ("query",),
}


def usage_from(raw: Any) -> Usage:
    """Codex's ``turn.completed`` usage as :class:`Usage`: its ``input_tokens`` include the
    cached ones, which forgeline counts apart."""
    if not isinstance(raw, Mapping):
        return Usage()
    cached = as_int(raw.get("cached_input_tokens"))
    return Usage(
        input_tokens=max(0, as_int(raw.get("input_tokens")) - cached),
        output_tokens=as_int(raw.get("output_tokens")),
        cache_read_tokens=cached,
        cache_write_tokens=as_int(raw.get("cache_write_input_tokens")),
    )


def _tool_name(item: Mapping[str, Any]) -> str:
    kind = str(item.get("type"))
    if kind == "mcp_tool_call":
        return f"{item.get('server', 'mcp')}.{item.get('tool', 'tool')}"
    return kind


def _tool_output(item: Mapping[str, Any]) -> tuple[str, bool]:
    """A finished tool item's output text and whether it failed."""
    kind = item.get("type")
    failed = item.get("status") in ("failed", "declined")
    if kind == "command_execution":
        code = item.get("exit_code")
        output = str(item.get("aggregated_output") or "")
        return cut_output(output), failed or (isinstance(code, int) and code != 0)
    if kind == "file_change":
        changes = item.get("changes")
        lines = (
            [
                f"{c.get('kind', 'update')} {c.get('path', '?')}"
                for c in changes
                if isinstance(c, Mapping)
            ]
            if isinstance(changes, list)
            else []
        )
        return cut_output("\n".join(lines)), failed
    if kind == "mcp_tool_call":
        error = item.get("error")
        if isinstance(error, Mapping):
            return cut_output(str(error.get("message", ""))), True
        result = item.get("result")
        return cut_output(str(result) if result is not None else ""), failed
    return "", failed


class CodexParser:
    """Turns stdout lines of one ``codex exec --json`` run into events (see the module).

    ``model`` and ``cwd`` fill the ``init`` event (the CLI's own lines name neither).
    ``raw=True`` attaches each line's object to its events as ``data.raw``.
    """

    def __init__(
        self,
        *,
        model: str | None = None,
        cwd: str | None = None,
        provider: str = PROVIDER,
        raw: bool = False,
    ) -> None:
        self.provider = provider
        self.raw = raw
        self.model = model
        self.cwd = cwd
        self.session_id: str | None = None
        self.verdict: Verdict | None = None
        self.lines = 0
        self.bad_lines = 0
        self.unknown: Counter[str] = Counter()
        self.turns = 0
        self._text = ""
        self._last_error = ""
        self._started: set[str] = set()

    def feed(self, line: bytes | str) -> list[AgentEvent]:
        """The events of one line (often one, sometimes none or two)."""
        obj = decode_line(self, line)
        if obj is None:
            return []
        return make_events(self, self.provider, self._map(obj, len(line)), obj, self.raw)

    def _map(self, obj: Mapping[str, Any], size: int) -> list[EventData]:  # noqa: PLR0911
        kind = obj.get("type")
        if kind == "thread.started":
            thread = obj.get("thread_id")
            if isinstance(thread, str) and thread:
                self.session_id = thread
            return [InitData(model=self.model, cwd=self.cwd)]
        if kind == "turn.started":
            return [StatusData(state="requesting")]
        if kind in ("item.started", "item.updated", "item.completed"):
            item = obj.get("item")
            if not isinstance(item, Mapping):
                self.bad_lines += 1
                return []
            return self._item(str(kind), item, size)
        if kind == "error":
            message = str(obj.get("message") or "error")
            if retry := _RECONNECTING.match(message):
                return [
                    StatusData(
                        state="retrying", attempt=int(retry.group(1)), detail={"error": message}
                    )
                ]
            self._last_error = message
            return [ErrorData(kind="api_error", message=message)]
        if kind == "turn.completed":
            self.turns += 1
            self._verdict(RunStatus.SUCCEEDED, self._text, usage_from(obj.get("usage")))
            return []
        if kind == "turn.failed":
            error = obj.get("error")
            message = str(error.get("message")) if isinstance(error, Mapping) else ""
            self._verdict(RunStatus.FAILED, message or self._last_error or "turn failed", Usage())
            return []
        self.unknown[str(kind)] += 1
        return []

    def _item(self, phase: str, item: Mapping[str, Any], size: int) -> list[EventData]:
        kind = str(item.get("type"))
        item_id = str(item.get("id", ""))
        if kind in _TOOL_INPUT:
            out: list[EventData] = []
            if item_id not in self._started:
                self._started.add(item_id)
                fields = {k: item[k] for k in _TOOL_INPUT[kind] if k in item}
                if size > TOOL_OUTPUT_LIMIT:
                    fields = bounded(fields)
                out.append(ToolUseData(id=item_id, name=_tool_name(item), input=fields))
            if phase == "item.completed":
                output, failed = _tool_output(item)
                out.append(ToolResultData(id=item_id, output=output, is_error=failed))
            return out
        if phase != "item.completed":
            return []
        if kind == "agent_message":
            text = str(item.get("text") or "")
            if not text:
                return []
            self._text = text
            return [MessageData(role="assistant", text=cut_output(text))]
        if kind == "error":
            # Not fatal: the turn goes on (e.g. "Model metadata for `x` not found").
            return [
                StatusData(
                    state="warning", detail={"message": cut_output(str(item.get("message", "")))}
                )
            ]
        self.unknown[f"item/{kind}"] += 1
        return []

    def _verdict(self, status: RunStatus, text: str, usage: Usage) -> None:
        previous = self.verdict.result.usage if self.verdict is not None else Usage()
        failed = status is RunStatus.FAILED
        self.verdict = Verdict(
            result=AgentResult(
                status=status,
                text=text,
                session_id=self.session_id,
                num_turns=self.turns,
                usage=previous if failed else usage,
                cost_source=CostSource.NONE,
            ),
            is_error=failed,
            error_kind="api_error",
            model=self.model,
        )
