"""OpenCode events → typed objects → normalized events, without a server.

The payloads are the real server's (shared/reference/opencode-serve.md, Appendix A), cut to
the fields that matter.
"""

from __future__ import annotations

import json
from typing import Any

from forgeline.adapters.agents.opencode.client import SessionState
from forgeline.adapters.agents.opencode.events import (
    MalformedEvent,
    MessageUpdated,
    PartUpdated,
    SessionError,
    SessionIdle,
    SessionStatus,
    StepFinishPart,
    ToolPart,
    UnknownEvent,
    parse_event,
    parse_frame,
    parse_stored_message,
)
from forgeline.adapters.agents.opencode.mapping import RunTranslator
from forgeline.domain.agent import (
    TOOL_OUTPUT_LIMIT,
    ErrorData,
    EventData,
    MessageData,
    RunStatus,
    StatusData,
    ToolResultData,
    ToolUseData,
)

SID = "ses_1"
USER = "msg_001"
A1 = "msg_002"
A2 = "msg_003"


def ev(kind: str, **props: Any) -> dict[str, Any]:
    """An event as the server sends it."""
    return {"id": "evt_x", "type": kind, "properties": {"sessionID": SID, **props}}


def info(mid: str, role: str, **extra: Any) -> dict[str, Any]:
    """A message info object."""
    return {"id": mid, "role": role, "sessionID": SID, "time": {"created": 1}, **extra}


def tool(status: str, **state: Any) -> dict[str, Any]:
    """A write tool part in the given state."""
    return {
        "id": "prt_tool",
        "messageID": A1,
        "sessionID": SID,
        "type": "tool",
        "tool": "write",
        "callID": "call_1",
        "state": {"status": status, "input": {"filePath": "/p/a.txt"}, **state},
    }


def step_finish(pid: str, mid: str) -> dict[str, Any]:
    """A step-finish part with 100 in, 10 out, 3 cache reads."""
    return {
        "id": pid,
        "messageID": mid,
        "sessionID": SID,
        "type": "step-finish",
        "reason": "stop",
        "cost": 0.25,
        "tokens": {"input": 100, "output": 10, "reasoning": 0, "cache": {"read": 3, "write": 0}},
    }


def text(pid: str, mid: str, value: str, *, ended: bool) -> dict[str, Any]:
    """A text part."""
    timing = {"start": 1, "end": 2} if ended else {"start": 1}
    return {"id": pid, "messageID": mid, "sessionID": SID, "type": "text", "text": value,
            "time": timing}  # fmt: skip


SUCCESSFUL_RUN = [
    ev("message.updated", info=info(USER, "user")),
    ev("message.part.updated", part=text("prt_u", USER, "Create it", ended=False)),
    ev("session.status", status={"type": "busy"}),
    ev("message.updated", info=info(A1, "assistant")),
    ev("message.part.updated", part=tool("pending", input={}, raw="")),
    ev("message.part.updated", part=tool("running")),
    ev("message.part.updated", part=tool("completed", output="Wrote file successfully.")),
    ev("message.part.updated", part=step_finish("prt_s1", A1)),
    ev("message.updated", info=info(A1, "assistant", finish="tool-calls", time={"completed": 3})),
    ev("session.status", status={"type": "busy"}),
    ev("message.updated", info=info(A2, "assistant")),
    ev("message.part.updated", part=text("prt_t", A2, "", ended=False)),
    ev("message.part.delta", messageID=A2, partID="prt_t", field="text", delta="do"),
    ev("message.part.updated", part=text("prt_t", A2, "done", ended=True)),
    ev("message.part.updated", part=step_finish("prt_s2", A2)),
    ev("message.updated", info=info(A2, "assistant", finish="stop", time={"completed": 4})),
    ev("session.status", status={"type": "idle"}),
    ev("session.idle"),
]


def feed(translator: RunTranslator, payloads: list[dict[str, Any]]) -> list[EventData]:
    """Every normalized event the payloads produce."""
    out: list[EventData] = []
    for payload in payloads:
        out += translator.on_event(parse_event(payload))
    return out


def test_parses_the_event_kinds() -> None:
    """Known kinds become typed objects; unknown kinds are tolerated; garbage is malformed."""
    assert parse_event(ev("session.idle")) == SessionIdle(SID)
    retry = parse_event(
        ev("session.status", status={"type": "retry", "attempt": 2, "message": "m", "next": 9})
    )
    assert retry == SessionStatus(SID, "retry", attempt=2, message="m", next_ms=9)
    error = parse_event(
        ev("session.error", error={"name": "APIError", "data": {"message": "x", "statusCode": 401}})
    )
    assert isinstance(error, SessionError)
    assert (error.error.name, error.error.status_code) == ("APIError", 401)
    part = parse_event(ev("message.part.updated", part=tool("completed", output="ok")))
    assert isinstance(part, PartUpdated)
    assert isinstance(part.part, ToolPart)
    assert part.part.finished
    finish = parse_event(ev("message.part.updated", part=step_finish("p", A1)))
    assert isinstance(finish, PartUpdated)
    assert isinstance(finish.part, StepFinishPart)
    assert finish.part.tokens.cache_read == 3
    updated = parse_event(ev("message.updated", info=info(A1, "assistant", time={"completed": 5})))
    assert isinstance(updated, MessageUpdated)
    assert updated.info.completed
    assert parse_event(ev("plugin.added", id="core/x")) == UnknownEvent("plugin.added", SID)
    assert isinstance(parse_event(ev("message.updated", info={"role": "user"})), MalformedEvent)
    assert isinstance(parse_frame("not json"), MalformedEvent)
    assert isinstance(parse_frame("[" * 100_000), MalformedEvent)  # past the decoder's depth
    assert isinstance(parse_event([1, 2]), MalformedEvent)


def test_successful_run_maps_in_order() -> None:
    """requesting, tool_use, tool_result, message; usage and turns from the step parts."""
    translator = RunTranslator()
    out = feed(translator, SUCCESSFUL_RUN)
    assert out == [
        StatusData(state="requesting"),
        ToolUseData(id="call_1", name="write", input={"filePath": "/p/a.txt"}),
        ToolResultData(id="call_1", output="Wrote file successfully.", is_error=False),
        MessageData(role="assistant", text="done"),
    ]
    assert translator.settled()
    outcome = translator.outcome()
    assert outcome.status is RunStatus.SUCCEEDED
    assert outcome.text == "done"
    assert outcome.num_turns == 2
    assert outcome.cost_usd == 0.5
    assert (outcome.usage.input_tokens, outcome.usage.output_tokens) == (200, 20)
    assert outcome.usage.cache_read_tokens == 6


def test_replays_and_resync_emit_nothing_twice() -> None:
    """Events seen again, and the same run read back from storage, add nothing."""
    translator = RunTranslator()
    first = feed(translator, SUCCESSFUL_RUN)
    # Statuses are reported on change (busy after idle is news); everything else is keyed.
    replay = [p for p in SUCCESSFUL_RUN if p["type"] != "session.status"]
    assert feed(translator, replay) == []
    done1 = info(A1, "assistant", finish="tool-calls", time={"completed": 3})
    stored = [
        parse_stored_message({"info": done1,
                              "parts": [tool("completed", output="Wrote"),
                                        step_finish("prt_s1", A1)]}),
        parse_stored_message({"info": info(A2, "assistant", finish="stop", time={"completed": 4}),
                              "parts": [text("prt_t", A2, "done", ended=True),
                                        step_finish("prt_s2", A2)]}),
    ]  # fmt: skip
    assert translator.on_messages([m for m in stored if m is not None]) == []
    assert translator.on_status(None) == []
    assert len(first) == 4
    assert translator.outcome().num_turns == 2


def test_resync_fills_what_the_stream_missed() -> None:
    """A stream that died after the tool call: the stored messages supply the rest once."""
    translator = RunTranslator()
    feed(translator, SUCCESSFUL_RUN[:6])  # up to the tool running
    stored = parse_stored_message(
        {
            "info": info(A2, "assistant", finish="stop", time={"completed": 4}),
            "parts": [text("prt_t", A2, "done", ended=True), step_finish("prt_s2", A2)],
        }
    )
    before = parse_stored_message(
        {
            "info": info(A1, "assistant", finish="tool-calls", time={"completed": 3}),
            "parts": [tool("completed", output="Wrote"), step_finish("prt_s1", A1)],
        }
    )
    assert stored is not None
    assert before is not None
    out = translator.on_messages([before, stored])
    assert out == [
        ToolResultData(id="call_1", output="Wrote", is_error=False),
        MessageData(role="assistant", text="done"),
    ]
    assert translator.settled()
    assert translator.outcome().status is RunStatus.SUCCEEDED


def test_user_text_is_not_an_assistant_message() -> None:
    """The prompt's own text part never comes out as a message."""
    translator = RunTranslator()
    out = feed(translator, SUCCESSFUL_RUN[:2])
    assert out == []
    assert translator.flush() == []


def test_retries_and_provider_error() -> None:
    """Retry statuses come once per attempt; the provider's error fails the run."""
    translator = RunTranslator()
    retry = ev("session.status", status={"type": "retry", "attempt": 1, "message": "fake 500"})
    out = feed(translator, [ev("session.status", status={"type": "busy"}), retry, retry])
    assert out[0] == StatusData(state="requesting")
    assert out[1] == StatusData(state="retrying", attempt=1, detail={"message": "fake 500"})
    assert len(out) == 2
    assert translator.on_status(SessionState("retry", attempt=1, message="fake 500")) == []
    err = {"name": "APIError", "data": {"message": "fake 500", "statusCode": 500}}
    out = feed(
        translator,
        [
            ev("session.error", error=err),
            ev("session.idle"),
            ev("message.updated", info=info(A1, "assistant", error=err, time={"completed": 2})),
        ],
    )
    assert out == [ErrorData(kind="APIError", message="fake 500")]
    assert translator.outcome().status is RunStatus.FAILED


def test_abort_we_asked_for_is_not_an_error() -> None:
    """MessageAbortedError after our abort: no error event, the run is cancelled."""
    translator = RunTranslator(abort_expected=True)
    aborted = {"name": "MessageAbortedError", "data": {"message": "Aborted"}}
    out = feed(
        translator,
        [
            ev("message.updated", info=info(A1, "assistant")),
            ev("message.part.updated", part=text("prt_t", A1, "thinking", ended=False)),
            ev("session.error", error=aborted),
        ],
    )
    assert out == []
    assert translator.flush() == [MessageData(role="assistant", text="thinking")]
    assert translator.outcome().status is RunStatus.CANCELLED


def test_known_messages_are_ignored_on_resume() -> None:
    """Late events of a previous run's messages do not leak into a resumed run."""
    translator = RunTranslator(known_messages=[A1])
    out = feed(
        translator,
        [
            ev("message.updated", info=info(A1, "assistant", finish="stop", time={"completed": 1})),
            ev("message.part.updated", part=text("prt_old", A1, "old", ended=True)),
        ],
    )
    assert out == []
    assert translator.last_assistant is None


def test_tool_error_and_long_output_are_bounded() -> None:
    """A failed tool is reported as an error result; huge outputs are cut."""
    translator = RunTranslator()
    feed(translator, [ev("message.updated", info=info(A1, "assistant"))])
    out = feed(translator, [ev("message.part.updated", part=tool("error", error="rejected"))])
    assert out[1] == ToolResultData(id="call_1", output="rejected", is_error=True)
    big = dict(tool("completed", output="x" * (TOOL_OUTPUT_LIMIT * 2)))
    big["callID"] = "call_2"
    (_, result) = feed(translator, [ev("message.part.updated", part=big)])
    assert isinstance(result, ToolResultData)
    assert len(result.output) < TOOL_OUTPUT_LIMIT + 100


def test_idle_without_answer_is_a_failure() -> None:
    """A session that goes idle with no completed assistant message did not succeed."""
    translator = RunTranslator()
    feed(translator, [ev("session.error", error={"name": "UnknownError", "data": {}})])
    outcome = translator.outcome()
    assert outcome.status is RunStatus.FAILED
    assert json.dumps(outcome.usage.to_dict())
