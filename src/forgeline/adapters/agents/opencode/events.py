"""What ``opencode serve`` says, parsed once into frozen types.

Two sources carry the same shapes: the SSE stream (``GET /event``: ``{"id", "type",
"properties"}`` per ``data:`` line) and the stored messages (``GET /session/{id}/message``:
``[{"info", "parts"}]``). Both are parsed here and nowhere else, so the rest of the adapter
only sees :data:`OpenCodeEvent` and :class:`StoredMessage`.

Tolerance rules (the server's ``Event`` union lists 89 types and grows): an unknown type
becomes :class:`UnknownEvent`; a known type whose payload lacks what we rely on becomes
:class:`MalformedEvent` with the reason; neither ever raises.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token counts of a step or a message, as opencode reports them."""

    input: int = 0
    output: int = 0
    reasoning: int = 0
    cache_read: int = 0
    cache_write: int = 0


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error object: ``{"name": "APIError", "data": {"message", "statusCode", …}}``."""

    name: str
    message: str
    status_code: int | None = None
    retryable: bool | None = None


# --- message parts ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextPart:
    """Assistant (or user) text; ``ended`` once ``time.end`` is set (the text is final)."""

    id: str
    message_id: str
    text: str
    ended: bool


@dataclass(frozen=True, slots=True)
class ToolPart:
    """A tool call; ``status`` goes ``pending`` → ``running`` → ``completed``/``error``."""

    id: str
    message_id: str
    call_id: str
    tool: str
    status: str
    input: Mapping[str, Any]
    output: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        """True once the tool has an answer (``completed`` or ``error``)."""
        return self.status in ("completed", "error")


@dataclass(frozen=True, slots=True)
class StepFinishPart:
    """The end of one model call, with its tokens and cost."""

    id: str
    message_id: str
    reason: str | None
    tokens: Tokens
    cost: float


@dataclass(frozen=True, slots=True)
class OtherPart:
    """A part kind we do not map (``step-start``, ``patch``, ``reasoning``, …)."""

    id: str
    message_id: str
    kind: str


Part = TextPart | ToolPart | StepFinishPart | OtherPart


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """A message's ``info``: who, and for assistant messages, how it ended."""

    id: str
    role: str
    session_id: str
    completed: bool = False
    finish: str | None = None
    error: ErrorInfo | None = None
    model: str | None = None
    cwd: str | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One element of ``GET /session/{id}/message``."""

    info: MessageInfo
    parts: tuple[Part, ...]


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerConnected:
    """First event of every stream connection: from here on nothing is missed."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent every 10 s; proves the stream is alive."""


@dataclass(frozen=True, slots=True)
class SessionStatus:
    """``session.status``: ``busy``, ``idle`` or ``retry`` (with attempt, message, next)."""

    session_id: str
    state: str
    attempt: int | None = None
    message: str | None = None
    next_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SessionIdle:
    """``session.idle``: the agent loop stopped (see the end-of-run rules in ``run``)."""

    session_id: str


@dataclass(frozen=True, slots=True)
class SessionError:
    """``session.error``: ``APIError``, ``MessageAbortedError``, ``UnknownError`` …"""

    session_id: str | None
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class MessageUpdated:
    """``message.updated``: a message's info changed (finish, error, completion)."""

    session_id: str
    info: MessageInfo


@dataclass(frozen=True, slots=True)
class PartUpdated:
    """``message.part.updated``: a part was created or changed."""

    session_id: str
    part: Part


@dataclass(frozen=True, slots=True)
class PartDelta:
    """``message.part.delta``: a streamed piece of a text part."""

    session_id: str
    message_id: str
    part_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class PermissionAsked:
    """``permission.asked``: the run blocks until the request is answered."""

    session_id: str
    request_id: str
    permission: str


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A type we do not use; ``session_id`` when its properties name one."""

    type: str
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class MalformedEvent:
    """A frame that is not JSON, or a known type without the fields we rely on."""

    reason: str
    session_id: str | None = None
    excerpt: str = ""


OpenCodeEvent = (
    ServerConnected
    | Heartbeat
    | SessionStatus
    | SessionIdle
    | SessionError
    | MessageUpdated
    | PartUpdated
    | PartDelta
    | PermissionAsked
    | UnknownEvent
    | MalformedEvent
)


def event_session_id(event: OpenCodeEvent) -> str | None:
    """The session an event belongs to, or None for server-wide events."""
    return getattr(event, "session_id", None)


# --- parsing ------------------------------------------------------------------------------


class _BadFieldError(Exception):
    """A required field is missing or of the wrong type (internal to this module)."""


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _BadFieldError(f"{key!r} missing or not a string")
    return value


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _map(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if value is None:
        return _EMPTY
    if not isinstance(value, Mapping):
        raise _BadFieldError(f"{key!r} is not an object")
    return value


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _submap(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, Mapping) else _EMPTY


def parse_tokens(obj: Mapping[str, Any]) -> Tokens:
    """``{"input", "output", "reasoning", "cache": {"read", "write"}}``."""
    cache = _submap(obj, "cache")
    return Tokens(
        input=_int(obj.get("input")),
        output=_int(obj.get("output")),
        reasoning=_int(obj.get("reasoning")),
        cache_read=_int(cache.get("read")),
        cache_write=_int(cache.get("write")),
    )


def parse_error(obj: Any) -> ErrorInfo | None:
    """An error object, or None when ``obj`` is not one."""
    if not isinstance(obj, Mapping):
        return None
    data = _submap(obj, "data")
    status = data.get("statusCode")
    retryable = data.get("isRetryable")
    return ErrorInfo(
        name=str(obj.get("name") or "UnknownError"),
        message=str(data.get("message") or obj.get("message") or ""),
        status_code=status if isinstance(status, int) else None,
        retryable=retryable if isinstance(retryable, bool) else None,
    )


def parse_part(obj: Mapping[str, Any]) -> Part:
    """One message part; raises ``_BadFieldError`` when it lacks an id, message id or type."""
    part_id = _str(obj, "id")
    message_id = _str(obj, "messageID")
    kind = _str(obj, "type")
    if kind == "text":
        return TextPart(
            id=part_id,
            message_id=message_id,
            text=str(obj.get("text") or ""),
            ended=_map(obj, "time").get("end") is not None,
        )
    if kind == "tool":
        state = _map(obj, "state")
        raw_input = state.get("input")
        output = state.get("output")
        error = state.get("error")
        return ToolPart(
            id=part_id,
            message_id=message_id,
            call_id=_opt_str(obj, "callID") or part_id,
            tool=_str(obj, "tool"),
            status=str(state.get("status") or "pending"),
            input=MappingProxyType(dict(raw_input)) if isinstance(raw_input, Mapping) else _EMPTY,
            output=output if isinstance(output, str) else None,
            error=error if isinstance(error, str) else None,
        )
    if kind == "step-finish":
        cost = obj.get("cost")
        return StepFinishPart(
            id=part_id,
            message_id=message_id,
            reason=_opt_str(obj, "reason"),
            tokens=parse_tokens(_map(obj, "tokens")),
            cost=float(cost) if isinstance(cost, int | float) else 0.0,
        )
    return OtherPart(id=part_id, message_id=message_id, kind=kind)


def parse_message_info(obj: Mapping[str, Any]) -> MessageInfo:
    """A message's ``info`` object."""
    model: str | None = None
    if (provider := _opt_str(obj, "providerID")) and (model_id := _opt_str(obj, "modelID")):
        model = f"{provider}/{model_id}"
    return MessageInfo(
        id=_str(obj, "id"),
        role=_str(obj, "role"),
        session_id=_str(obj, "sessionID"),
        completed=_map(obj, "time").get("completed") is not None,
        finish=_opt_str(obj, "finish"),
        error=parse_error(obj.get("error")),
        model=model,
        cwd=_opt_str(_map(obj, "path"), "cwd"),
    )


def parse_stored_message(obj: Any) -> StoredMessage | None:
    """One ``{info, parts}`` of ``GET /session/{id}/message``; None when unusable."""
    if not isinstance(obj, Mapping):
        return None
    try:
        info = parse_message_info(_map(obj, "info"))
        raw_parts = obj.get("parts")
        parts: list[Part] = []
        for raw in raw_parts if isinstance(raw_parts, list) else ():
            if isinstance(raw, Mapping):
                try:
                    parts.append(parse_part(raw))
                except _BadFieldError:
                    continue
        return StoredMessage(info=info, parts=tuple(parts))
    except _BadFieldError:
        return None


def parse_event(obj: Any) -> OpenCodeEvent:
    """One decoded ``data:`` payload of ``GET /event``. Never raises."""
    if not isinstance(obj, Mapping):
        return MalformedEvent("event is not a JSON object", excerpt=_excerpt(obj))
    kind = obj.get("type")
    props = obj.get("properties")
    if not isinstance(kind, str) or not isinstance(props, Mapping):
        return MalformedEvent("event lacks 'type' or 'properties'", excerpt=_excerpt(obj))
    session_id = _opt_str(props, "sessionID")
    try:
        return _parse_known(kind, props, session_id)
    except _BadFieldError as exc:
        return MalformedEvent(f"{kind}: {exc}", session_id=session_id, excerpt=_excerpt(obj))


def _parse_known(  # noqa: PLR0911 - a dispatch on the event type
    kind: str, props: Mapping[str, Any], session_id: str | None
) -> OpenCodeEvent:
    match kind:
        case "server.connected":
            return ServerConnected()
        case "server.heartbeat":
            return Heartbeat()
        case "session.status":
            status = _map(props, "status")
            attempt = status.get("attempt")
            next_ms = status.get("next")
            return SessionStatus(
                session_id=_str(props, "sessionID"),
                state=_str(status, "type"),
                attempt=attempt if isinstance(attempt, int) else None,
                message=_opt_str(status, "message"),
                next_ms=next_ms if isinstance(next_ms, int) else None,
            )
        case "session.idle":
            return SessionIdle(session_id=_str(props, "sessionID"))
        case "session.error":
            error = parse_error(props.get("error")) or ErrorInfo("UnknownError", "")
            return SessionError(session_id=session_id, error=error)
        case "message.updated":
            return MessageUpdated(
                session_id=_str(props, "sessionID"), info=parse_message_info(_map(props, "info"))
            )
        case "message.part.updated":
            part = _map(props, "part")
            return PartUpdated(
                session_id=session_id or _str(part, "sessionID"), part=parse_part(part)
            )
        case "message.part.delta":
            return PartDelta(
                session_id=_str(props, "sessionID"),
                message_id=_str(props, "messageID"),
                part_id=_str(props, "partID"),
                delta=str(props.get("delta") or ""),
            )
        case "permission.asked":
            return PermissionAsked(
                session_id=_str(props, "sessionID"),
                request_id=_str(props, "id"),
                permission=str(props.get("permission") or ""),
            )
        case _:
            return UnknownEvent(type=kind, session_id=session_id)


def parse_frame(data: str) -> OpenCodeEvent:
    """The text of one SSE ``data`` field (possibly several joined lines)."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the decoder goes
        return MalformedEvent("event data is not JSON", excerpt=data[:200])
    return parse_event(obj)


def _excerpt(obj: Any) -> str:
    try:
        return json.dumps(obj)[:200]
    except (TypeError, ValueError):
        return repr(obj)[:200]


__all__ = [
    "ErrorInfo",
    "Heartbeat",
    "MalformedEvent",
    "MessageInfo",
    "MessageUpdated",
    "OpenCodeEvent",
    "OtherPart",
    "Part",
    "PartDelta",
    "PartUpdated",
    "PermissionAsked",
    "ServerConnected",
    "SessionError",
    "SessionIdle",
    "SessionStatus",
    "StepFinishPart",
    "StoredMessage",
    "TextPart",
    "Tokens",
    "ToolPart",
    "UnknownEvent",
    "event_session_id",
    "parse_event",
    "parse_frame",
    "parse_stored_message",
]
