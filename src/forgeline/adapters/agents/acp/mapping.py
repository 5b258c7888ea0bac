"""ACP ``session/update`` notifications → forgeline's normalized event payloads.

The SDK has parsed and validated each notification into a typed model already; this module
decides what each means for forgeline's stream. Pure: no I/O, so it is tested on its own.

- ``agent_message_chunk``: deltas, gathered per message and emitted as one ``message`` when
  the message ends (another kind of update arrives, or the turn ends);
- ``agent_thought_chunk``: gathered the same way, emitted as a ``status`` ``thinking``;
- ``tool_call``/``tool_call_update``: one ``tool_use`` once the call runs (``in_progress``,
  or ended), with the latest input reported: agents announce a ``pending`` call before its
  arguments are complete (opencode sends ``rawInput: {}`` or only a cwd first); one
  ``tool_result`` when it is ``completed`` or ``failed``;
- ``plan``: a ``status`` ``plan`` with its entries; ``usage_update``: remembered (a cost in
  USD is cumulative over the session) and a ``status`` ``usage``;
- everything else (commands, modes, config options, session info, user chunks) is not
  conversation and is counted, not emitted.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from acp.schema import (
    AgentMessageChunk,
    AgentPlanUpdate,
    AgentThoughtChunk,
    ContentToolCallContent,
    FileEditToolCallContent,
    TerminalToolCallContent,
    TextContentBlock,
    ToolCallProgress,
    ToolCallStart,
    UsageUpdate,
)

from forgeline.domain.agent import (
    TOOL_OUTPUT_LIMIT,
    EventData,
    MessageData,
    StatusData,
    ToolResultData,
    ToolUseData,
    cut_output,
)

#: The longest tool name or plan entry kept (agents put whole commands in titles).
NAME_LIMIT = 200
#: The largest tool input kept as it is, in characters of JSON; larger ones are cut.
INPUT_LIMIT = TOOL_OUTPUT_LIMIT
#: The most plan entries one ``plan`` status carries.
PLAN_ENTRIES_LIMIT = 50
#: The most characters of one message (or thought) gathered before it is emitted in part.
GATHER_LIMIT = 1024 * 1024
#: The most tool calls remembered per run (their state is small, but agents are untrusted).
TOOL_CALLS_LIMIT = 10_000


@dataclass
class _ToolCall:
    name: str
    input: Any = None
    announced: bool = False
    finished: bool = False


@dataclass
class UpdateTranslator:
    """Turns one run's session updates into event payloads (see the module docstring)."""

    message: list[str] = field(default_factory=list)
    thought: list[str] = field(default_factory=list)
    #: The assistant's last complete message: the run's result text.
    last_message: str = ""
    #: The session's cumulative cost in USD, as the agent last reported it (None: never).
    cost_usd: float | None = None
    ignored: Counter[str] = field(default_factory=Counter)
    _calls: dict[str, _ToolCall] = field(default_factory=dict)
    _gathered: int = 0

    def on_update(self, update: Any) -> list[EventData]:
        """The payloads one update gives (often none: chunks are gathered first)."""
        if isinstance(update, AgentMessageChunk):
            out = self._end_thought()
            if self._chunk(update.content, self.message):
                out += self._end_message()
            return out
        if isinstance(update, AgentThoughtChunk):
            out = self._end_message()
            if self._chunk(update.content, self.thought):
                out += self._end_thought()
            return out
        out = self.flush()
        if isinstance(update, ToolCallStart | ToolCallProgress):
            out += self._tool(update)
        elif isinstance(update, AgentPlanUpdate):
            entries = [
                {"content": entry.content[:NAME_LIMIT], "status": entry.status}
                for entry in update.entries[:PLAN_ENTRIES_LIMIT]
            ]
            out.append(StatusData(state="plan", detail={"entries": entries}))
        elif isinstance(update, UsageUpdate):
            detail: dict[str, Any] = {"context_tokens": update.used, "context_size": update.size}
            if update.cost is not None and update.cost.currency.upper() == "USD":
                self.cost_usd = update.cost.amount
                detail["session_cost_usd"] = update.cost.amount
            out.append(StatusData(state="usage", detail=detail))
        else:
            self.ignored[str(getattr(update, "session_update", type(update).__name__))] += 1
        return out

    def flush(self) -> list[EventData]:
        """The payloads of what was gathered so far (at the end of a turn, or before
        another kind of update)."""
        return [*self._end_thought(), *self._end_message()]

    # --- chunks ----------------------------------------------------------------------------

    def _chunk(self, content: Any, into: list[str]) -> bool:
        """Gather a chunk's text; True when what is gathered must be emitted now (past
        :data:`GATHER_LIMIT`: an endless message is emitted in parts, never held whole)."""
        if isinstance(content, TextContentBlock):
            into.append(content.text)
            self._gathered += len(content.text)
        return self._gathered > GATHER_LIMIT

    def _take(self, parts: list[str]) -> str:
        """What ``parts`` gathered, emptied (blank text counts as nothing)."""
        if not parts:
            return ""  # the other kind may be gathering: its count stays
        text = "".join(parts)
        parts.clear()
        self._gathered = 0
        return text if text.strip() else ""

    def _end_message(self) -> list[EventData]:
        text = self._take(self.message)
        if not text:
            return []
        self.last_message = text
        return [MessageData(role="assistant", text=text)]

    def _end_thought(self) -> list[EventData]:
        text = self._take(self.thought)
        return [StatusData(state="thinking", detail={"text": cut_output(text)})] if text else []

    # --- tool calls ------------------------------------------------------------------------

    def _tool(self, update: ToolCallStart | ToolCallProgress) -> list[EventData]:
        call = self._calls.get(update.tool_call_id)
        if call is None:
            if len(self._calls) >= TOOL_CALLS_LIMIT:
                self._calls.pop(next(iter(self._calls)))
            # The first title names the tool (opencode: "write", "bash"); later titles
            # describe the call ("hello.txt", the command line).
            name = update.title or update.kind or "tool"
            call = self._calls[update.tool_call_id] = _ToolCall(name=name[:NAME_LIMIT])
        out: list[EventData] = []
        if update.raw_input:
            call.input = update.raw_input  # the latest word: pending calls have partial input
        if not call.announced and update.status in {"in_progress", "completed", "failed"}:
            call.announced = True
            out.append(
                ToolUseData(id=update.tool_call_id, name=call.name, input=_input(call.input))
            )
        if not call.finished and update.status in {"completed", "failed"}:
            call.finished = True
            out.append(
                ToolResultData(
                    id=update.tool_call_id,
                    output=cut_output(_output(update)),
                    is_error=update.status == "failed",
                )
            )
        return out


def _input(raw: Any) -> dict[str, Any]:
    """The call's input as the agent reported it, bounded."""
    if not isinstance(raw, dict):
        raw = {} if raw is None else {"input": raw}
    try:
        text = json.dumps(raw, default=str)
    except ValueError:  # a circular structure cannot come from JSON, but stay safe
        return {"input": "(unprintable)"}
    if len(text) <= INPUT_LIMIT:
        return dict(raw)
    return {"input": cut_output(text, INPUT_LIMIT)}


def _output(update: ToolCallStart | ToolCallProgress) -> str:
    """What the call gave: its text content, else its raw output."""
    parts: list[str] = []
    for item in update.content or ():
        if isinstance(item, ContentToolCallContent):
            if isinstance(item.content, TextContentBlock):
                parts.append(item.content.text)
        elif isinstance(item, FileEditToolCallContent):
            parts.append(f"edited {item.path}")
        elif isinstance(item, TerminalToolCallContent):
            parts.append(f"(terminal {item.terminal_id})")
    if parts:
        return "\n".join(parts)
    raw = update.raw_output
    if raw is None:
        return ""
    if isinstance(raw, dict) and isinstance(raw.get("output"), str):
        return str(raw["output"])
    if isinstance(raw, str):
        return raw
    return json.dumps(raw, default=str)
