"""ACP session updates → normalized event payloads, on the SDK's own models (no process)."""

from __future__ import annotations

from typing import Any

from acp.schema import SessionNotification

from forgeline.adapters.agents.acp import mapping
from forgeline.adapters.agents.acp.mapping import UpdateTranslator
from forgeline.domain.agent import MessageData, StatusData, ToolResultData, ToolUseData


def update(**body: Any) -> Any:
    """The SDK's model of one ``session/update`` (as the connection hands it over)."""
    return SessionNotification.model_validate({"sessionId": "s", "update": body}).update


def text_chunk(kind: str, text: str) -> Any:
    """A message or thought chunk."""
    return update(sessionUpdate=kind, content={"type": "text", "text": text})


def test_chunks_are_gathered_into_one_message_and_thoughts_apart() -> None:
    """Deltas make one message when something else comes; a thought is a thinking status."""
    t = UpdateTranslator()
    out = []
    for item in (
        text_chunk("agent_thought_chunk", "let me "),
        text_chunk("agent_thought_chunk", "think"),
        text_chunk("agent_message_chunk", "hel"),
        text_chunk("agent_message_chunk", "lo"),
    ):
        out += t.on_update(item)
    out += t.flush()
    assert out == [
        StatusData(state="thinking", detail={"text": "let me think"}),
        MessageData(role="assistant", text="hello"),
    ]
    assert t.last_message == "hello"


def test_an_endless_message_is_emitted_in_parts(monkeypatch: Any) -> None:
    """Past the gathering limit the text so far is emitted: memory stays bounded."""
    monkeypatch.setattr(mapping, "GATHER_LIMIT", 10)
    t = UpdateTranslator()
    out = []
    for _ in range(5):
        out += t.on_update(text_chunk("agent_message_chunk", "abcd"))
    out += t.flush()
    assert [d.text for d in out if isinstance(d, MessageData)] == ["abcdabcdabcd", "abcdabcd"]


def test_tool_call_announced_once_running_with_its_latest_input() -> None:
    """A pending call with partial input is not announced; once running it is, with the
    input then known; a failed call's result is an error."""
    t = UpdateTranslator()
    out = t.on_update(
        update(
            sessionUpdate="tool_call",
            toolCallId="c1",
            title="bash",
            kind="execute",
            status="pending",
            rawInput={"cwd": "/w"},
        )
    )
    assert out == []
    out = t.on_update(
        update(
            sessionUpdate="tool_call_update",
            toolCallId="c1",
            status="in_progress",
            title="perl -e 'sleep 1'",
            rawInput={"command": "perl -e 'sleep 1'"},
        )
    )
    assert out == [ToolUseData(id="c1", name="bash", input={"command": "perl -e 'sleep 1'"})]
    out = t.on_update(
        update(
            sessionUpdate="tool_call_update",
            toolCallId="c1",
            status="failed",
            rawOutput={"output": "exit 1"},
        )
    )
    assert out == [ToolResultData(id="c1", output="exit 1", is_error=True)]
    assert (
        t.on_update(update(sessionUpdate="tool_call_update", toolCallId="c1", status="failed"))
        == []
    )


def test_usage_cost_only_in_usd_and_other_kinds_counted() -> None:
    """A USD cost is remembered; another currency is not taken for dollars; kinds that
    are not conversation are counted, not emitted."""
    t = UpdateTranslator()
    [status] = t.on_update(
        update(
            sessionUpdate="usage_update", used=5, size=100, cost={"amount": 2.0, "currency": "EUR"}
        )
    )
    assert isinstance(status, StatusData)
    assert t.cost_usd is None
    t.on_update(
        update(
            sessionUpdate="usage_update", used=6, size=100, cost={"amount": 0.3, "currency": "USD"}
        )
    )
    assert t.cost_usd == 0.3
    assert (
        t.on_update(update(sessionUpdate="available_commands_update", availableCommands=[])) == []
    )
    assert t.ignored["available_commands_update"] == 1
