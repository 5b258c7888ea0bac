"""The CodeAgent port: run a coding agent, stream its normalized events, cancel it."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol, runtime_checkable

from forgeline.domain.agent import AgentCapabilities, AgentEvent, AgentRequest


@runtime_checkable
class CodeAgent(Protocol):
    """A coding agent (Claude Code, OpenCode) driven by forgeline.

    Duties of every implementation:

    - :meth:`execute` validates the request first (``AgentRequest.validate``), then yields
      normalized events and ends with **exactly one** ``result`` event, whatever happens:
      success, agent failure, crash of the agent's process, cancellation (``cancelled``),
      wall-clock or idle timeout (``timed_out``). Only a request that fails validation
      raises instead of yielding.
    - If the consumer stops iterating (``aclose`` or the consuming task is cancelled), the
      run is cancelled and every process it started is gone before ``aclose`` returns.
    - :meth:`cancel` is safe at any time, from any task, any number of times: before the run
      starts (it then ends at once as ``cancelled``), during it, or after it ended (a no-op).
      It never raises for a finished or unknown run and returns only when the run's
      processes are gone, bounded in time (5 s).
    - :meth:`capabilities` answers within ``DEFAULT_AVAILABILITY_TIMEOUT`` and never raises:
      an unavailable agent is reported with ``available=False`` and a ``detail``.
    """

    @property
    def name(self) -> str:
        """The provider name (``claude-code``, ``opencode``)."""
        ...

    def execute(self, request: AgentRequest) -> AsyncGenerator[AgentEvent, None]:
        """Run the agent; an async generator of events ending with one ``result``
        (``aclose`` it to stop the run early)."""
        ...

    async def cancel(self, run_id: str) -> None:
        """Stop the run named ``run_id`` (``AgentRequest.run_id``) and reap its processes."""
        ...

    async def capabilities(self) -> AgentCapabilities:
        """What the provider supports and whether it is available right now."""
        ...

    async def aclose(self) -> None:
        """Release shared resources (a server the adapter started); idempotent."""
        ...
