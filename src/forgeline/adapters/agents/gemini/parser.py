"""From ``gemini -p … --output-format stream-json`` lines to forgeline's normalized events.

One line is one JSON object (``reference/more-agents.md``). The mapping:

=============================  ========================================================
CLI line                       normalized event
=============================  ========================================================
``init{session_id, model}``    ``init``
``message`` role assistant     ``message``; the CLI streams text in pieces
                               (``delta: true``), joined here into one message that is
                               flushed by the next event of another kind
``message`` role user          nothing (the CLI echoes the prompt)
``tool_use``                   ``tool_use`` (``tool_id``, ``tool_name``, ``parameters``)
``tool_result``                ``tool_result`` (``status`` error → ``is_error``)
``error`` severity warning     ``status`` ``warning``
``error``                      ``error``
``result{status, stats}``      the verdict; ``stats`` holds this run's tokens (not the
                               session's), an API failure's message is unwrapped from
                               ``[API Error: {json}]``
=============================  ========================================================

Unknown types are tolerated and counted in :attr:`GeminiParser.unknown`; the parser never
raises on input.
"""

from __future__ import annotations

import json
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

PROVIDER = "gemini"

_API_ERROR = re.compile(r"\[API Error: (.*)\]\s*$", re.DOTALL)


def usage_from(stats: Any) -> Usage:
    """The run's tokens from ``result.stats``: ``input_tokens`` include the cached ones,
    which forgeline counts apart."""
    if not isinstance(stats, Mapping):
        return Usage()
    cached = as_int(stats.get("cached"))
    return Usage(
        input_tokens=max(0, as_int(stats.get("input_tokens")) - cached),
        output_tokens=as_int(stats.get("output_tokens")),
        cache_read_tokens=cached,
    )


def api_message(message: str) -> str:
    """``[API Error: {"error": {"code": 401, "message": "…"}}]`` as ``API error 401: …``;
    anything else as it is."""
    match = _API_ERROR.search(message)
    if match is None:
        return message
    try:
        error = json.loads(match.group(1)).get("error")
        return f"API error {error['code']}: {error['message']}"
    except (ValueError, TypeError, KeyError, AttributeError):
        return match.group(1)


class GeminiParser:
    """Turns stdout lines of one ``gemini`` stream-json run into events (see the module).

    ``cwd`` fills the ``init`` event (the CLI's does not name it). ``raw=True`` attaches
    each line's object to its events as ``data.raw``.
    """

    def __init__(self, *, cwd: str | None = None, provider: str = PROVIDER, raw: bool = False):
        self.provider = provider
        self.raw = raw
        self.cwd = cwd
        self.model: str | None = None
        self.session_id: str | None = None
        self.verdict: Verdict | None = None
        self.lines = 0
        self.bad_lines = 0
        self.unknown: Counter[str] = Counter()
        self._text: list[str] = []
        self._said = ""

    def feed(self, line: bytes | str) -> list[AgentEvent]:
        """The events of one line (none, one, or a flushed message and one)."""
        obj = decode_line(self, line)
        if obj is None:
            return []
        session = obj.get("session_id")
        if isinstance(session, str) and session:
            self.session_id = session
        kind = obj.get("type")
        datas: list[EventData] = []
        if kind == "message":
            if obj.get("role") == "assistant":
                self._text.append(str(obj.get("content") or ""))
                if obj.get("delta") is not True:
                    datas = self.flush()
        else:
            datas = self.flush() + self._map(str(kind), obj, len(line))
        return make_events(self, self.provider, datas, obj, self.raw)

    def flush(self) -> list[EventData]:
        """The assistant text gathered so far, as one message (if any)."""
        text = "".join(self._text)
        self._text.clear()
        if not text:
            return []
        self._said = text
        return [MessageData(role="assistant", text=cut_output(text))]

    def _map(self, kind: str, obj: Mapping[str, Any], size: int) -> list[EventData]:  # noqa: PLR0911
        if kind == "init":
            model = obj.get("model")
            self.model = model if isinstance(model, str) else None
            return [InitData(model=self.model, cwd=self.cwd)]
        if kind == "tool_use":
            params = obj.get("parameters")
            params = params if isinstance(params, Mapping) else {}
            if size > TOOL_OUTPUT_LIMIT:
                params = bounded(params)
            return [
                ToolUseData(
                    id=str(obj.get("tool_id", "")), name=str(obj.get("tool_name", "")), input=params
                )
            ]
        if kind == "tool_result":
            error = obj.get("error")
            output = obj.get("output")
            text = str(output) if output is not None else ""
            if isinstance(error, Mapping) and not text:
                text = str(error.get("message", ""))
            return [
                ToolResultData(
                    id=str(obj.get("tool_id", "")),
                    output=cut_output(text),
                    is_error=obj.get("status") == "error",
                )
            ]
        if kind == "error":
            message = cut_output(api_message(str(obj.get("message") or "error")))
            if obj.get("severity") == "warning":
                return [StatusData(state="warning", detail={"message": message})]
            return [ErrorData(kind="agent_error", message=message)]
        if kind == "result":
            self._result(obj)
            return []
        self.unknown[kind] += 1
        return []

    def _result(self, obj: Mapping[str, Any]) -> None:
        stats = obj.get("stats")
        failed = obj.get("status") != "success"
        text = self._said
        kind = "agent_error"
        if failed:
            error = obj.get("error")
            message = str(error.get("message", "")) if isinstance(error, Mapping) else ""
            text = cut_output(api_message(message)) or "the run failed"
            kind = "api_error" if message.startswith("[API Error") else kind
        models = stats.get("models") if isinstance(stats, Mapping) else None
        model = self.model
        if isinstance(models, Mapping) and len(models) == 1:
            model = str(next(iter(models)))
        turns = stats.get("tool_calls") if isinstance(stats, Mapping) else None
        self.verdict = Verdict(
            result=AgentResult(
                status=RunStatus.FAILED if failed else RunStatus.SUCCEEDED,
                text=text,
                session_id=self.session_id,
                num_turns=as_int(turns) + (0 if failed else 1),
                duration_ms=as_int(stats.get("duration_ms")) if isinstance(stats, Mapping) else 0,
                usage=usage_from(stats),
                cost_source=CostSource.NONE,
            ),
            is_error=failed,
            error_kind=kind,
            model=model,
        )
