"""Helpers of the agent adapter tests: collect a run, take its one result, ask ``ps``."""

from __future__ import annotations

import subprocess

from forgeline.domain.agent import AgentEvent, AgentRequest, AgentResult
from forgeline.ports.agent import CodeAgent


async def collect(agent: CodeAgent, request: AgentRequest) -> list[AgentEvent]:
    """Every event of one run."""
    return [event async for event in agent.execute(request)]


def result_of(events: list[AgentEvent]) -> AgentResult:
    """The one result event, which must be the last one."""
    results = [e for e in events if e.is_result]
    assert len(results) == 1, [e.type for e in events]
    assert events[-1].is_result
    data = events[-1].data
    assert isinstance(data, AgentResult)
    return data


def live(pattern: str) -> list[str]:
    """``ps`` lines naming ``pattern`` whose process is not a zombie."""
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True, text=True, check=True
    ).stdout
    return [
        line
        for line in out.splitlines()
        if pattern in line and line.split(None, 2)[1][0] != "Z" and "ps -ww -eo" not in line
    ]
