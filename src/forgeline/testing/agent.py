"""A fast scripted :class:`~forgeline.ports.agent.CodeAgent`: no model, no subprocess.

:class:`ScriptedAgent` plays a short agent run: ``init``, a ``Write`` ``tool_use``, the file
really written into the workdir, its ``tool_result``, a ``message`` and the one ``result``.
It records when the worker entered ``execute`` (the "agent start" of the benchmarks'
POST-to-agent-start latency) and how many runs overlapped. A test scripts how the run ends
(``outcome``), makes the agent unavailable (``unavailable``), or acts in the middle of the
run (``during``: request a cancel, take the lease away) to drive the worker's policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path

from forgeline.domain.agent import (
    AgentCapabilities,
    AgentEvent,
    AgentProvider,
    AgentRequest,
    AgentResult,
    EventData,
    InitData,
    MessageData,
    RunStatus,
    ToolResultData,
    ToolUseData,
    Usage,
)
from forgeline.domain.errors import ForgelineError

#: Cancels remembered for runs not started yet (the port allows cancel before execute).
_PRECANCEL_LIMIT = 1024


class ScriptedAgent:
    """A :class:`~forgeline.ports.agent.CodeAgent` that writes one file and succeeds.

    Registered under ``claude-code`` by default, so builds that name no provider use it.
    ``hold_s`` is a think time between the ``tool_use`` and the write (cancellable), to
    make runs overlap when a benchmark wants them concurrent. ``outcome`` other than
    ``succeeded`` ends the run so (with ``text``) before anything is written;
    ``unavailable`` is raised by ``execute`` (the program is not installed here);
    ``during`` is awaited after the ``tool_use``, before the hold.
    """

    def __init__(
        self,
        *,
        hold_s: float = 0.0,
        file_name: str = "hello.txt",
        name: str = AgentProvider.CLAUDE_CODE.value,
        outcome: RunStatus = RunStatus.SUCCEEDED,
        text: str = "done",
        unavailable: ForgelineError | None = None,
        during: Callable[[AgentRequest], Awaitable[None]] | None = None,
    ) -> None:
        self._name = name
        self._outcome = outcome
        self._text = text
        self._unavailable = unavailable
        self._during = during
        self._hold_s = hold_s
        self._file_name = file_name
        #: ``time.perf_counter()`` when ``execute`` was entered, by task id (run id if none).
        self.entered: dict[str, float] = {}
        self.runs = 0
        self.running = 0
        self.max_running = 0
        self._entered_waiters: dict[str, asyncio.Future[float]] = {}
        self._cancels: dict[str, asyncio.Event] = {}
        self._precancelled: dict[str, None] = {}

    @property
    def name(self) -> str:
        """The provider name it stands in for (``claude-code``)."""
        return self._name

    def execute(self, request: AgentRequest) -> AsyncGenerator[AgentEvent, None]:
        """Record the start, validate ``request``, and return the run's event stream."""
        stamp = time.perf_counter()
        request.validate()
        if self._unavailable is not None:
            raise self._unavailable
        key = request.task_id or request.run_id
        self.entered[key] = stamp
        waiter = self._entered_waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(stamp)
        return self._events(request)

    async def wait_entered(self, key: str, timeout_s: float) -> float:
        """The ``perf_counter`` stamp at which the run of task ``key`` entered ``execute``."""
        if key in self.entered:
            return self.entered[key]
        waiter = self._entered_waiters.setdefault(key, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        finally:
            if not waiter.done():
                self._entered_waiters.pop(key, None)

    async def cancel(self, run_id: str) -> None:
        """Stop the run at its next step; a run not started yet ends at once as cancelled."""
        event = self._cancels.get(run_id)
        if event is not None:
            event.set()
            return
        self._precancelled[run_id] = None
        while len(self._precancelled) > _PRECANCEL_LIMIT:
            del self._precancelled[next(iter(self._precancelled))]

    async def capabilities(self) -> AgentCapabilities:
        """Always available: nothing to install."""
        return AgentCapabilities(
            provider=self._name, available=True, version="scripted", models=("scripted",)
        )

    async def aclose(self) -> None:
        """Nothing to release."""

    async def _events(self, request: AgentRequest) -> AsyncGenerator[AgentEvent, None]:
        started = time.monotonic()
        session = uuid.uuid4().hex
        cancel = self._cancels.setdefault(request.run_id, asyncio.Event())
        if request.run_id in self._precancelled:
            del self._precancelled[request.run_id]
            cancel.set()
        self.runs += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)

        def event(data: EventData) -> AgentEvent:
            return AgentEvent(data=data, provider=self._name, session_id=session)

        def result(status: RunStatus, text: str, turns: int) -> AgentEvent:
            return event(
                AgentResult(
                    status=status,
                    text=text,
                    session_id=session,
                    num_turns=turns,
                    duration_ms=int((time.monotonic() - started) * 1000),
                    usage=Usage(input_tokens=100 * turns, output_tokens=20 * turns),
                )
            )

        try:
            if cancel.is_set():  # cancelled before it started: end at once
                yield result(RunStatus.CANCELLED, "cancelled", 0)
                return
            yield event(InitData(model="scripted", cwd=request.workdir, tools=("Write",)))
            path = Path(request.workdir) / self._file_name
            content = f"written by the scripted agent, run {request.run_id}\n"
            tool_id = f"toolu_{uuid.uuid4().hex[:24]}"
            yield event(
                ToolUseData(
                    id=tool_id, name="Write", input={"file_path": str(path), "content": content}
                )
            )
            if self._during is not None:
                await self._during(request)
            if self._hold_s > 0 and not cancel.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cancel.wait(), self._hold_s)
            if cancel.is_set():
                yield result(RunStatus.CANCELLED, "cancelled", 1)
                return
            if self._outcome is not RunStatus.SUCCEEDED:
                yield result(self._outcome, self._text, 1)
                return
            try:
                await asyncio.to_thread(path.write_text, content)
            except OSError as exc:
                yield event(ToolResultData(id=tool_id, output=str(exc), is_error=True))
                yield result(RunStatus.FAILED, f"could not write {path.name}: {exc}", 1)
                return
            yield event(ToolResultData(id=tool_id, output=f"File created successfully at: {path}"))
            yield event(MessageData(role="assistant", text="done"))
            yield result(RunStatus.SUCCEEDED, self._text, 2)
        finally:
            self.running -= 1
            self._cancels.pop(request.run_id, None)
