"""The agent provider registry: which CodeAgents exist, and which is the default."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from forgeline.domain.agent import AgentCapabilities
from forgeline.domain.errors import DuplicateProviderError, UnknownProviderError
from forgeline.ports.agent import CodeAgent

log = structlog.get_logger(__name__)

#: How long a provider's availability is trusted before it is checked again: a check
#: starts the agent's program, too costly for every build submitted, and an operator who
#: installs or fixes the program waits at most this long.
AVAILABILITY_TTL_S = 10.0


#: Builds a provider's adapter; called once, on the provider's first use.
AgentFactory = Callable[[], CodeAgent]


class ProviderRegistry:
    """Named :class:`CodeAgent` adapters; the first one registered is the default.

    A provider may be registered as a factory (:meth:`register_factory`): its adapter is
    built, and its module imported, only when it is first asked for, so a command that runs
    one provider (``forgeline agent run``) loads no other.

    Thread-safe: registration and lookup hold one lock, so concurrent callers never see a
    half-registered provider, a lost entry, a changed default or an adapter built twice.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._agents: dict[str, CodeAgent] = {}
        #: Every name, in registration order, with its factory (None: registered built).
        self._entries: dict[str, AgentFactory | None] = {}

    def register(self, agent: CodeAgent) -> None:
        """Add ``agent`` under its name; ``DuplicateProviderError`` if the name is taken."""
        with self._lock:
            self._add(agent.name, None)
            self._agents[agent.name] = agent

    def register_factory(self, name: str, factory: AgentFactory) -> None:
        """Add provider ``name``, built by ``factory`` (which imports its adapter) on first
        use; ``DuplicateProviderError`` if the name is taken."""
        with self._lock:
            self._add(name, factory)

    def _add(self, name: str, factory: AgentFactory | None) -> None:
        if name in self._entries:
            raise DuplicateProviderError(name)
        self._entries[name] = factory

    def _built(self, name: str) -> CodeAgent:
        """The adapter of ``name`` (a registered name), built now if it was not yet."""
        agent = self._agents.get(name)
        if agent is None:
            factory = self._entries[name]
            assert factory is not None  # noqa: S101 - registered built, or by factory
            agent = self._agents[name] = factory()
        return agent

    def get(self, name: str | None = None) -> CodeAgent:
        """The named provider, or the default when ``name`` is None or empty."""
        with self._lock:
            if not name:
                if not self._entries:
                    raise UnknownProviderError("(default)", ())
                return self._built(next(iter(self._entries)))
            if name not in self._entries:
                raise UnknownProviderError(name, tuple(self._entries))
            return self._built(name)

    @property
    def default_name(self) -> str | None:
        """The name of the first provider registered, if any."""
        with self._lock:
            return next(iter(self._entries), None)

    def names(self) -> list[str]:
        """Registered names, in registration order (the default first)."""
        with self._lock:
            return list(self._entries)

    def agents(self) -> list[CodeAgent]:
        """Registered agents, in registration order (every one built)."""
        with self._lock:
            return [self._built(name) for name in self._entries]

    async def aclose(self) -> None:
        """Close every adapter built so far (one failing close keeps no other open)."""
        with self._lock:
            built = list(self._agents.values())
        for agent in built:
            try:
                await agent.aclose()
            except Exception:  # one failing close must not keep others open
                log.exception("agent.close_failed", provider=agent.name)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


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
