"""OpenCodeAgent: capabilities only so far; execution lands with its own issue."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from forgeline.adapters.agents.probe import probe_binary
from forgeline.domain.agent import AgentCapabilities, AgentEvent, AgentProvider, AgentRequest
from forgeline.domain.errors import AgentUnavailableError


class OpenCodeAgent:
    """Drives ``opencode serve``."""

    def __init__(self, *, binary: str = "opencode") -> None:
        self._binary = binary

    @property
    def name(self) -> str:
        """``opencode``."""
        return AgentProvider.OPENCODE.value

    async def execute(self, request: AgentRequest) -> AsyncGenerator[AgentEvent, None]:
        """Not yet implemented: raises ``AgentUnavailableError``."""
        request.validate()
        raise AgentUnavailableError("opencode execution is not implemented yet", provider=self.name)
        yield  # pragma: no cover - makes this an async generator

    async def cancel(self, run_id: str) -> None:
        """Nothing runs yet, so nothing to cancel."""

    async def capabilities(self) -> AgentCapabilities:
        """Probe ``opencode --version``."""
        probe = await probe_binary(self._binary)
        return AgentCapabilities(
            provider=self.name,
            available=probe.available,
            version=probe.version,
            detail=probe.detail,
            resume=True,
            streaming=True,
            permission_modes=(),
            models=(),
        )

    async def aclose(self) -> None:
        """No shared resources."""
