"""Redaction of what leaves a run: events, results, payloads, error messages.

Every value handed to a run is registered with the process's redactor
(:class:`forgeline.logs.Redactor`) before the run starts (see
:mod:`forgeline.services.credentials`); everything the run produces passes through
:func:`redact_event` before it is stored, streamed, logged or sent in a callback, so an
agent that prints its environment shows ``[REDACTED:<name>]`` wherever a value was.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Protocol

from forgeline.domain.agent import AgentEvent, EventData, ToolResultData

# What ``forgeline.domain.agent.cut_output`` appends to a cut tool output.
_CUT_MARKER = re.compile(r"\n… \[\d+ more characters cut\]\Z")


class TextRedactor(Protocol):
    """What redaction needs from :class:`forgeline.logs.Redactor`."""

    def redact(self, text: str) -> str:
        """``text`` with every registered value masked."""
        ...

    def redact_truncated(self, text: str) -> str:
        """``redact`` for a text cut at a limit: a dangling secret prefix is masked too."""
        ...

    def redact_obj(self, obj: Any) -> Any:
        """Every string inside a JSON-like structure redacted."""
        ...


def _redact_field(value: Any, redactor: TextRedactor) -> Any:
    # Exact type checks: RunStatus is a StrEnum and must stay one; numbers stay numbers.
    if type(value) is str:
        return redactor.redact(value)
    if isinstance(value, Mapping):
        return redactor.redact_obj(dict(value))
    if type(value) is tuple and all(type(item) is str for item in value):
        return tuple(redactor.redact(item) for item in value)
    return value


def redact_output(output: str, redactor: TextRedactor) -> str:
    """A tool output, possibly cut by ``cut_output``: a secret straddling the cut is masked."""
    marker = _CUT_MARKER.search(output)
    if marker is None:
        return redactor.redact(output)
    return redactor.redact_truncated(output[: marker.start()]) + marker.group(0)


def redact_data(data: EventData, redactor: TextRedactor) -> EventData:
    """An event payload with every string field (and nested mapping) redacted."""
    changes: dict[str, Any] = {}
    for spec in dataclasses.fields(data):
        value = getattr(data, spec.name)
        if isinstance(data, ToolResultData) and spec.name == "output":
            redacted = redact_output(value, redactor)
        else:
            redacted = _redact_field(value, redactor)
        if redacted != value:
            changes[spec.name] = redacted
    return dataclasses.replace(data, **changes) if changes else data


def redact_event(event: AgentEvent, redactor: TextRedactor) -> AgentEvent:
    """``event`` with every registered secret replaced by ``[REDACTED:<name>]``.

    Covers every text the event carries: message text, tool inputs (nested), tool outputs
    (including a secret cut in half by the output limit), status details, error messages,
    the result's text, and ``raw`` when debugging attaches it. Identifiers (provider,
    session id, seq, task id) are left as they are. Returns ``event`` itself when nothing
    needed masking.
    """
    data = redact_data(event.data, redactor)
    raw = redactor.redact_obj(dict(event.raw)) if event.raw is not None else None
    if data is event.data and raw == event.raw:
        return event
    return dataclasses.replace(event, data=data, raw=raw)


def redact_payload(payload: Any, redactor: TextRedactor) -> Any:
    """A JSON-like payload (task result, callback body) with secrets masked."""
    return redactor.redact_obj(payload)


def redact_message(message: str, redactor: TextRedactor) -> str:
    """An error message (e.g. from a failed command) with secrets masked."""
    return redactor.redact(message)
