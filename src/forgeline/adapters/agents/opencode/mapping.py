"""From opencode's events and stored messages to forgeline's normalized events.

One :class:`RunTranslator` per run. It is fed live events (:meth:`RunTranslator.on_event`)
and, after a stream reconnect, the stored state (:meth:`RunTranslator.on_messages`,
:meth:`RunTranslator.on_status`); it returns the normalized event data to emit. Because
both sources describe the same parts, everything it emits is keyed, and a key is emitted
once: a text part once it is final, a tool call's ``tool_use`` and ``tool_result`` once per
call id, a step's tokens once per step part, a retry once per attempt, an error once per
``(name, message)``. Replaying any mix of events and stored messages therefore yields no
duplicates, and nothing seen in either is missed.

The mapping (DESIGN.md, normalized events):

- assistant ``text`` part, when final (``time.end``) → ``message``;
- ``tool`` part → ``tool_use`` (once running, with its input), then ``tool_result`` (on
  ``completed`` / ``error``; output cut to ``TOOL_OUTPUT_LIMIT``);
- ``session.status`` → ``status`` on change: ``requesting`` when busy, ``retrying`` with
  the attempt, the provider's message and when the next try is due;
- ``session.error`` / a message's ``error`` → ``error`` (an abort we asked for is not an
  error: the run ends ``cancelled``);
- ``step-finish`` parts → the result's usage, cost and number of turns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from forgeline.adapters.agents.opencode.client import SessionState
from forgeline.adapters.agents.opencode.events import (
    ErrorInfo,
    MessageInfo,
    MessageUpdated,
    OpenCodeEvent,
    OtherPart,
    Part,
    PartUpdated,
    SessionError,
    SessionStatus,
    StepFinishPart,
    StoredMessage,
    TextPart,
    ToolPart,
)
from forgeline.domain.agent import (
    ErrorData,
    EventData,
    MessageData,
    RunStatus,
    StatusData,
    ToolResultData,
    ToolUseData,
    Usage,
    cut_output,
)

ABORTED = "MessageAbortedError"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the stored and streamed state says about how the run ended."""

    status: RunStatus
    text: str
    num_turns: int
    cost_usd: float
    usage: Usage
    reason: str | None = None


class RunTranslator:
    """Stateful, duplicate-free mapping of one run (see the module docstring)."""

    def __init__(self, *, known_messages: Iterable[str] = (), abort_expected: bool = False) -> None:
        # Messages that existed before our prompt (a resumed session): their late events
        # (summaries, a second idle pair) must not be taken for this run's.
        self._known = frozenset(known_messages)
        self.abort_expected = abort_expected
        self._roles: dict[str, str] = {}
        self._assistant: dict[str, MessageInfo] = {}
        self._texts: dict[str, TextPart] = {}
        self._text_order: list[str] = []
        self._emitted_texts: set[str] = set()
        self._tools_used: set[str] = set()
        self._tools_done: set[str] = set()
        self._steps: dict[str, StepFinishPart] = {}
        self._step_starts: set[str] = set()
        self._retries: set[int] = set()
        self._errors: dict[tuple[str, str], ErrorInfo] = {}
        self._last_state: str | None = None

    # --- inputs ----------------------------------------------------------------------------

    def on_event(self, event: OpenCodeEvent) -> list[EventData]:
        """Map one live event of this run's session."""
        match event:
            case MessageUpdated(info=info):
                return self._on_info(info)
            case PartUpdated(part=part):
                return self._on_part(part)
            case SessionStatus(state=state, attempt=attempt, message=message, next_ms=next_ms):
                return self._on_state(state, attempt, message, next_ms)
            case SessionError(error=error):
                return self._on_error(error)
            case _:
                return []

    def on_messages(self, messages: Iterable[StoredMessage]) -> list[EventData]:
        """Map the stored messages (a re-sync): only what was not emitted yet comes out."""
        out: list[EventData] = []
        for message in messages:
            out += self._on_info(message.info)
            for part in message.parts:
                out += self._on_part(part)
            out += self._on_info(message.info)  # flush texts now that all parts are known
        return out

    def on_status(self, state: SessionState | None) -> list[EventData]:
        """Map the session's entry of ``GET /session/status`` (None: idle)."""
        if state is None:
            return []
        return self._on_state(state.state, state.attempt, state.message, None)

    # --- what the state says ---------------------------------------------------------------

    def is_new(self, message_id: str) -> bool:
        """True for a message of this run (not one the session held before the prompt)."""
        return message_id not in self._known

    @property
    def last_assistant(self) -> MessageInfo | None:
        """The newest assistant message of this run (ids are time-ordered)."""
        if not self._assistant:
            return None
        return self._assistant[max(self._assistant)]

    @property
    def steps_started(self) -> int:
        """Model calls started so far (step-start parts)."""
        return len(self._step_starts)

    @property
    def cost_usd(self) -> float:
        """Cost of the model calls so far, as opencode reports it."""
        return sum(s.cost for s in self._steps.values())

    @property
    def errors(self) -> list[ErrorInfo]:
        """Errors reported so far, in order."""
        return list(self._errors.values())

    def settled(self) -> bool:
        """True when the newest assistant message is complete (``time.completed`` set).

        Only meaningful after the session went idle: between two steps the previous
        message is complete too.
        """
        last = self.last_assistant
        return last is not None and last.completed

    def outcome(self) -> Outcome:
        """How the run ended, from everything seen (call once the loop is over)."""
        usage = Usage(
            input_tokens=sum(s.tokens.input for s in self._steps.values()),
            output_tokens=sum(s.tokens.output for s in self._steps.values()),
            cache_read_tokens=sum(s.tokens.cache_read for s in self._steps.values()),
            cache_write_tokens=sum(s.tokens.cache_write for s in self._steps.values()),
        )
        cost = sum(s.cost for s in self._steps.values())
        last = self.last_assistant
        text = self._text_of(last.id) if last is not None else ""
        status, reason = self._status(last)
        return Outcome(status, text, len(self._steps), cost, usage, reason)

    def flush(self) -> list[EventData]:
        """Texts of this run not emitted yet (the run ends: they are as final as they get)."""
        out: list[EventData] = []
        for part_id in self._text_order:
            out += self._emit_text(self._texts[part_id], force=True)
        return out

    # --- internals -------------------------------------------------------------------------

    def _status(self, last: MessageInfo | None) -> tuple[RunStatus, str | None]:
        if last is not None and last.error is not None:
            if last.error.name == ABORTED:
                return RunStatus.CANCELLED, "aborted"
            return RunStatus.FAILED, f"{last.error.name}: {last.error.message}"
        if self._errors:
            error = next(reversed(self._errors.values()))
            if error.name == ABORTED:
                return RunStatus.CANCELLED, "aborted"
            return RunStatus.FAILED, f"{error.name}: {error.message}"
        if last is not None and last.completed and last.finish:
            return RunStatus.SUCCEEDED, None
        return RunStatus.FAILED, "the session went idle without a completed answer"

    def _on_info(self, info: MessageInfo) -> list[EventData]:
        if info.id in self._known:
            return []
        self._roles[info.id] = info.role
        out: list[EventData] = []
        if info.role == "assistant":
            self._assistant[info.id] = info
            # Texts that arrived before their message's role was known can go out now.
            for part_id in self._text_order:
                part = self._texts[part_id]
                if part.message_id == info.id:
                    out += self._emit_text(part, force=info.completed)
            if info.error is not None:
                out += self._on_error(info.error)
        return out

    def _on_part(self, part: Part) -> list[EventData]:
        if part.message_id in self._known or self._roles.get(part.message_id) == "user":
            return []
        match part:
            case TextPart():
                if part.id not in self._texts:
                    self._text_order.append(part.id)
                self._texts[part.id] = part
                return self._emit_text(part)
            case ToolPart():
                return self._on_tool(part)
            case StepFinishPart():
                self._steps.setdefault(part.id, part)
                return []
            case OtherPart(kind="step-start"):
                self._step_starts.add(part.id)
                return []
            case _:
                return []

    def _on_tool(self, part: ToolPart) -> list[EventData]:
        out: list[EventData] = []
        if part.status == "pending":
            return out  # the input is still streaming in
        if part.call_id not in self._tools_used:
            self._tools_used.add(part.call_id)
            out.append(ToolUseData(id=part.call_id, name=part.tool, input=dict(part.input)))
        if part.finished and part.call_id not in self._tools_done:
            self._tools_done.add(part.call_id)
            is_error = part.status == "error"
            output = (part.error if is_error else part.output) or part.output or part.error or ""
            out.append(
                ToolResultData(id=part.call_id, output=cut_output(output), is_error=is_error)
            )
        return out

    def _emit_text(self, part: TextPart, *, force: bool = False) -> list[EventData]:
        if part.id in self._emitted_texts or self._roles.get(part.message_id) != "assistant":
            return []
        if not (part.ended or force) or not part.text.strip():
            return []
        self._emitted_texts.add(part.id)
        return [MessageData(role="assistant", text=part.text)]

    def _text_of(self, message_id: str) -> str:
        return "\n".join(
            self._texts[p].text
            for p in self._text_order
            if self._texts[p].message_id == message_id and self._texts[p].text.strip()
        )

    def _on_state(
        self, state: str, attempt: int | None, message: str | None, next_ms: int | None
    ) -> list[EventData]:
        if state == "retry":
            key = attempt or 0
            self._last_state = state
            if key in self._retries:
                return []
            self._retries.add(key)
            detail: dict[str, object] = {"message": message or ""}
            if next_ms is not None:
                detail["next_ms"] = next_ms
            return [StatusData(state="retrying", attempt=attempt, detail=detail)]
        if state == "busy" and self._last_state != "busy":
            self._last_state = state
            return [StatusData(state="requesting")]
        self._last_state = state
        return []

    def _on_error(self, error: ErrorInfo) -> list[EventData]:
        key = (error.name, error.message)
        if key in self._errors:
            return []
        self._errors[key] = error
        if error.name == ABORTED and self.abort_expected:
            return []
        return [ErrorData(kind=error.name, message=error.message or error.name)]
