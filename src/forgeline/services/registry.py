"""The agent provider registry: which CodeAgents exist, and which is the default."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from forgeline.domain.agent import AgentCapabilities
from forgeline.domain.errors import DuplicateProviderError, UnknownProviderError
from forgeline.ports.agent import CodeAgent

#: How long a provider's availability is trusted before it is checked again: a check
#: starts the agent's program, too costly for every build submitted, and an operator who
#: installs or fixes the program waits at most this long.
AVAILABILITY_TTL_S = 10.0


class ProviderRegistry:
    """Named :class:`CodeAgent` adapters; the first one registered is the default.

    Thread-safe: registration and lookup hold one lock, so concurrent callers never see a
    half-registered provider, a lost entry or a changed default.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._agents: dict[str, CodeAgent] = {}

    def register(self, agent: CodeAgent) -> None:
        """Add ``agent`` under its name; ``DuplicateProviderError`` if the name is taken."""
        with self._lock:
            if agent.name in self._agents:
                raise DuplicateProviderError(agent.name)
            self._agents[agent.name] = agent

    def get(self, name: str | None = None) -> CodeAgent:
        """The named provider, or the default when ``name`` is None or empty."""
        with self._lock:
            if not name:
                if not self._agents:
                    raise UnknownProviderError("(default)", ())
                return next(iter(self._agents.values()))
            try:
                return self._agents[name]
            except KeyError:
                raise UnknownProviderError(name, tuple(self._agents)) from None

    @property
    def default_name(self) -> str | None:
        """The name of the first provider registered, if any."""
        with self._lock:
            return next(iter(self._agents), None)

    def names(self) -> list[str]:
        """Registered names, in registration order (the default first)."""
        with self._lock:
            return list(self._agents)

    def agents(self) -> list[CodeAgent]:
        """Registered agents, in registration order."""
        with self._lock:
            return list(self._agents.values())

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._agents

    def __len__(self) -> int:
        with self._lock:
            return len(self._agents)


async def describe_agents(registry: ProviderRegistry) -> list[dict[str, Any]]:
    """Each provider with ``name``, ``default``, ``available`` and ``capabilities``, the
    default first; availability checks run concurrently (each bounded by the adapter)."""
    agents = registry.agents()
    caps = await asyncio.gather(*(agent.capabilities() for agent in agents))
    default = registry.default_name
    return [
        {
            "name": agent.name,
            "default": agent.name == default,
            "available": cap.available,
            "capabilities": cap.to_dict(),
        }
        for agent, cap in zip(agents, caps, strict=True)
    ]


class AvailabilityCache:
    """Each provider's capabilities, checked at most once per :data:`AVAILABILITY_TTL_S`;
    concurrent callers share one check."""

    def __init__(self, ttl_s: float = AVAILABILITY_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._lock = asyncio.Lock()
        self._known: dict[str, tuple[float, AgentCapabilities]] = {}

    async def check(self, agent: CodeAgent) -> AgentCapabilities:
        """The agent's capabilities, from a check at most ``ttl_s`` old."""
        async with self._lock:
            checked = self._known.get(agent.name)
            if checked is None or time.monotonic() - checked[0] > self._ttl_s:
                checked = (time.monotonic(), await agent.capabilities())
                self._known[agent.name] = checked
            return checked[1]
