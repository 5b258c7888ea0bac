"""Agent runs: the request, the normalized events every provider emits, and the result.

The event shapes are a public contract (DESIGN.md, "Normalized events"): each event is one
JSON object ``{seq, task_id, provider, session_id, type, time, data}``. ``EventData`` is the
typed union of the seven ``data`` shapes; :class:`AgentEvent` is the envelope.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any, ClassVar, Literal

from forgeline.domain.clock import format_time, utcnow
from forgeline.domain.errors import InvalidTimeoutError, PromptRequiredError, ValidationError
from forgeline.domain.inputs import LINE, TEXT_CRLF, check_text

#: Seconds an availability check (binary ``--version``, server health) may take before the
#: provider is reported unavailable. Long enough for a cold start of a 245 MB native binary
#: on a loaded 2-core machine, short enough that ``GET /agents`` stays interactive.
DEFAULT_AVAILABILITY_TIMEOUT: float = 5.0

#: The longest wall-clock timeout a request may ask for: 24 hours. Anything longer is
#: almost certainly a unit mistake (milliseconds for seconds) and would pin a worker slot.
MAX_TIMEOUT_S: float = 24 * 3600.0

#: The largest event position (``seq``) a client may name: a signed 64-bit integer, what
#: both databases compare a position with.
MAX_SEQ: int = 2**63 - 1

#: Default wall-clock limit of a run when the request names none.
DEFAULT_TIMEOUT_S: float = 1800.0

#: How much of a tool's output an event carries; the rest is cut with a marker, so one
#: ``cat`` of a large file cannot bloat the event store or the SSE stream.
TOOL_OUTPUT_LIMIT: int = 16 * 1024


class AgentProvider(StrEnum):
    """The coding agents forgeline knows how to drive."""

    CLAUDE_CODE = "claude-code"
    OPENCODE = "opencode"
    CODEX = "codex"
    GEMINI = "gemini"
    QWEN = "qwen"


class CostSource(StrEnum):
    """Where a result's ``cost_usd`` comes from: the CLI's own report, an estimate from the
    price table (the CLI reports tokens only), or nowhere (no price known: 0)."""

    REPORTED = "reported"
    ESTIMATED = "estimated"
    NONE = "none"


class RunStatus(StrEnum):
    """How an agent run ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


def check_timeout(name: str, value: float | None) -> None:
    """``InvalidTimeoutError`` unless ``value`` is None or a finite number of seconds in
    ``(0, MAX_TIMEOUT_S]``."""
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidTimeoutError(name, value, MAX_TIMEOUT_S)
    if not math.isfinite(value) or value <= 0 or value > MAX_TIMEOUT_S:
        raise InvalidTimeoutError(name, value, MAX_TIMEOUT_S)


@dataclass(frozen=True, slots=True)
class AgentRequest:
    """One agent run: what to ask, where, with which limits.

    ``env`` holds extra variables for the child (the credentials a build carries); adapters
    add them to an explicit allow-list, never to an inherited environment. ``run_id`` names
    the run for :meth:`CodeAgent.cancel`. ``state_key`` names the agent state (config dir,
    session transcripts) the run uses: runs with the same key can resume each other's
    sessions; the worker passes the project name, and without one the adapter derives a
    key from ``workdir``.
    """

    prompt: str
    workdir: str
    provider: str = AgentProvider.CLAUDE_CODE.value
    model: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    idle_timeout_s: float | None = None
    max_turns: int | None = None
    max_cost_usd: float | None = None
    resume_session: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    task_id: str | None = None
    state_key: str | None = None

    def validate(self) -> AgentRequest:
        """Raise a :class:`ValidationError` subclass for a request that can never run."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise PromptRequiredError
        # These reach the agent's command line, where a NUL would cut them silently.
        check_text(self.prompt, field="prompt", allow=TEXT_CRLF)
        for name, value in (("resume_session", self.resume_session), ("model", self.model)):
            if value is not None:
                check_text(value, field=name, allow=LINE)
        check_timeout("timeout_s", self.timeout_s)
        check_timeout("idle_timeout_s", self.idle_timeout_s)
        if self.max_turns is not None and self.max_turns < 1:
            raise ValidationError(f"max_turns must be at least 1, got {self.max_turns}")
        if self.max_cost_usd is not None and not (
            math.isfinite(self.max_cost_usd) and self.max_cost_usd > 0
        ):
            raise ValidationError(f"max_cost_usd must be positive, got {self.max_cost_usd}")
        if not self.workdir:
            raise ValidationError("workdir is required")
        return self

    def state_name(self) -> str:
        """The directory name of the run's agent state: ``state_key`` made path-safe, or
        one derived from ``workdir`` (its name plus a hash of the whole path)."""
        if self.state_key:
            key = _UNSAFE_NAME.sub("_", self.state_key).strip("._")[:100]
            if key:
                return key
        workdir = str(PurePosixPath(self.workdir))
        digest = hashlib.sha256(workdir.encode()).hexdigest()[:12]
        name = _UNSAFE_NAME.sub("_", PurePosixPath(workdir).name).strip("._")[:60] or "root"
        return f"{name}-{digest}"


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of a run, summed over its model calls."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        """The ``usage`` object of the ``result`` event."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
        }


# --- the seven event payloads -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InitData:
    """The run started: which model, where, with which tools."""

    type: ClassVar[Literal["init"]] = "init"
    model: str | None
    cwd: str | None
    tools: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MessageData:
    """Text said by the assistant (or a user-side marker such as an interruption)."""

    type: ClassVar[Literal["message"]] = "message"
    role: Literal["assistant", "user"]
    text: str


@dataclass(frozen=True, slots=True)
class ToolUseData:
    """The agent calls a tool."""

    type: ClassVar[Literal["tool_use"]] = "tool_use"
    id: str
    name: str
    input: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolResultData:
    """A tool's answer, cut to :data:`TOOL_OUTPUT_LIMIT` characters."""

    type: ClassVar[Literal["tool_result"]] = "tool_result"
    id: str
    output: str
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class StatusData:
    """Progress that is not conversation: requesting, retrying, a pipeline step."""

    type: ClassVar[Literal["status"]] = "status"
    state: str
    attempt: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ErrorData:
    """Something went wrong; ``message`` never holds a secret."""

    type: ClassVar[Literal["error"]] = "error"
    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class AgentResult:
    """How a run ended: the data of the one ``result`` event that ends every run."""

    type: ClassVar[Literal["result"]] = "result"
    status: RunStatus
    text: str = ""
    session_id: str | None = None
    num_turns: int = 0
    duration_ms: int = 0
    cost_usd: float = 0.0
    usage: Usage = field(default_factory=Usage)
    cost_source: CostSource = CostSource.NONE

    @property
    def succeeded(self) -> bool:
        """True when the agent reported success."""
        return self.status is RunStatus.SUCCEEDED


EventData = (
    InitData | MessageData | ToolUseData | ToolResultData | StatusData | ErrorData | AgentResult
)

EventType = Literal["init", "message", "tool_use", "tool_result", "status", "error", "result"]


def cut_output(text: str, limit: int = TOOL_OUTPUT_LIMIT) -> str:
    """Cut ``text`` to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… [{len(text) - limit} more characters cut]"


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One normalized event: the envelope around one :data:`EventData`.

    Adapters fill ``provider``, ``session_id``, ``time`` and ``data``; whoever persists or
    prints the stream assigns ``seq`` (dense per task, from 1) and ``task_id`` with
    :meth:`numbered`. ``raw`` carries the provider's own message only when a debug setting
    asks for it.
    """

    data: EventData
    provider: str
    session_id: str | None = None
    time: datetime = field(default_factory=utcnow)
    seq: int = 0
    task_id: str | None = None
    raw: Mapping[str, Any] | None = None

    @property
    def type(self) -> EventType:
        """The event's type name (``init``, ``message``, … ``result``)."""
        return self.data.type

    @property
    def is_result(self) -> bool:
        """True for the terminal ``result`` event."""
        return isinstance(self.data, AgentResult)

    def numbered(self, seq: int, task_id: str | None) -> AgentEvent:
        """A copy with its place in a task's stream."""
        return AgentEvent(
            data=self.data,
            provider=self.provider,
            session_id=self.session_id,
            time=self.time,
            seq=seq,
            task_id=task_id,
            raw=self.raw,
        )

    def to_dict(self) -> dict[str, Any]:
        """The public JSON shape of DESIGN.md."""
        return {
            "seq": self.seq,
            "task_id": self.task_id,
            "provider": self.provider,
            "session_id": self.session_id,
            "type": self.type,
            "time": format_time(self.time),
            "data": data_to_dict(self.data, self.raw),
        }


def data_to_dict(data: EventData, raw: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``data`` object of an event in its public JSON shape."""
    out: dict[str, Any]
    match data:
        case InitData():
            out = {"model": data.model, "cwd": data.cwd, "tools": list(data.tools)}
        case MessageData():
            out = {"role": data.role, "text": data.text}
        case ToolUseData():
            out = {"id": data.id, "name": data.name, "input": dict(data.input)}
        case ToolResultData():
            out = {"id": data.id, "output": data.output, "is_error": data.is_error}
        case StatusData():
            out = {"state": data.state, **dict(data.detail)}
            if data.attempt is not None:
                out["attempt"] = data.attempt
        case ErrorData():
            out = {"kind": data.kind, "message": data.message}
        case AgentResult():
            out = {
                "status": data.status.value,
                "text": data.text,
                "session_id": data.session_id,
                "num_turns": data.num_turns,
                "duration_ms": data.duration_ms,
                "cost_usd": data.cost_usd,
                "cost_source": data.cost_source.value,
                "usage": data.usage.to_dict(),
            }
    if raw is not None:
        out["raw"] = dict(raw)
    return out


def event_from_dict(obj: Mapping[str, Any]) -> AgentEvent:
    """Rebuild an :class:`AgentEvent` from its public JSON shape (the inverse of ``to_dict``)."""
    kind = obj["type"]
    d: dict[str, Any] = dict(obj["data"])
    raw = d.pop("raw", None)
    data: EventData
    if kind == "init":
        data = InitData(model=d.get("model"), cwd=d.get("cwd"), tools=tuple(d.get("tools") or ()))
    elif kind == "message":
        data = MessageData(role=d["role"], text=d["text"])
    elif kind == "tool_use":
        data = ToolUseData(id=d["id"], name=d["name"], input=d.get("input") or {})
    elif kind == "tool_result":
        data = ToolResultData(id=d["id"], output=d["output"], is_error=bool(d.get("is_error")))
    elif kind == "status":
        state = d.pop("state")
        attempt = d.pop("attempt", None)
        data = StatusData(state=state, attempt=attempt, detail=d)
    elif kind == "error":
        data = ErrorData(kind=d["kind"], message=d["message"])
    elif kind == "result":
        data = AgentResult(
            status=RunStatus(d["status"]),
            text=d.get("text") or "",
            session_id=d.get("session_id"),
            num_turns=int(d.get("num_turns") or 0),
            duration_ms=int(d.get("duration_ms") or 0),
            cost_usd=float(d.get("cost_usd") or 0.0),
            usage=Usage(**(d.get("usage") or {})),
            cost_source=CostSource(d.get("cost_source") or CostSource.NONE.value),
        )
    else:
        raise ValidationError(f"unknown event type {kind!r}")
    return AgentEvent(
        data=data,
        provider=obj["provider"],
        session_id=obj.get("session_id"),
        time=datetime.fromisoformat(obj["time"]),
        seq=int(obj.get("seq") or 0),
        task_id=obj.get("task_id"),
        raw=raw,
    )


@dataclass(frozen=True, slots=True)
class AgentCapabilities:
    """What a provider can do, and whether it can run here right now."""

    provider: str
    available: bool
    version: str | None = None
    detail: str | None = None
    resume: bool = True
    streaming: bool = True
    permission_modes: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    #: Where its results' ``cost_usd`` comes from (see :class:`CostSource`).
    cost: CostSource = CostSource.REPORTED
    #: Whether its results carry token counts.
    tokens: bool = True
    #: Whether a run can be cancelled (every adapter: the process group is killed).
    cancel: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON shape used by ``GET /agents`` and ``forgeline agents --json``."""
        return {
            "available": self.available,
            "version": self.version,
            "detail": self.detail,
            "resume": self.resume,
            "streaming": self.streaming,
            "permission_modes": list(self.permission_modes),
            "models": list(self.models),
            "cost": self.cost.value,
            "tokens": self.tokens,
            "cancel": self.cancel,
        }
