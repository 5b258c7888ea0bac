"""A build with thousands of events, for the dashboard's test and benchmark: a queued build
(no worker takes it) whose event log is written straight into the store."""

from __future__ import annotations

from forgeline.domain.agent import (
    AgentEvent,
    MessageData,
    StatusData,
    ToolResultData,
    ToolUseData,
)
from forgeline.ports.store import Store


def conversation_event(number: int) -> AgentEvent:
    """The ``number``-th event of a long, plausible conversation: tool calls with their
    results, messages and the odd status, cycling."""
    turn, kind = divmod(number, 4)
    tool_id = f"toolu_{turn:06d}"
    data: MessageData | ToolUseData | ToolResultData | StatusData
    if kind == 0:
        data = MessageData(role="assistant", text=f"Step {turn}: let me look at the next file.")
    elif kind == 1:
        data = ToolUseData(id=tool_id, name="Read", input={"file_path": f"src/module_{turn}.py"})
    elif kind == 2:
        lines = "\n".join(f"{i:4d}  def function_{turn}_{i}(): return {i}" for i in range(12))
        data = ToolResultData(id=tool_id, output=lines)
    else:
        data = StatusData(state="requesting")
    return AgentEvent(data=data, provider="claude-code")


async def write_events(store: Store, task_id: str, count: int, *, start: int = 0) -> None:
    """Append events ``start`` .. ``start + count - 1`` of the conversation to the task."""
    for number in range(start, start + count):
        await store.append_event(task_id, conversation_event(number))
