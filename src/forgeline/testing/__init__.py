"""Test doubles that follow the ports exactly, for the fast test tier and the benchmarks.

- :class:`ScriptedAgent`: a :class:`~forgeline.ports.agent.CodeAgent` that plays a short,
  scripted run (or fails, or is unavailable) without a model or a subprocess;
- :class:`FakeClock`: a :class:`~forgeline.domain.clock.Clock` whose sleeps pass at once;
- :class:`FakeGit`: a :class:`~forgeline.ports.git.Git` over an in-memory remote.

Nothing here is imported by forgeline itself; the worker and the pool run against these
exactly as against the real adapters.
"""

from forgeline.testing.agent import ScriptedAgent
from forgeline.testing.clock import FakeClock
from forgeline.testing.git import FakeGit

__all__ = ["FakeClock", "FakeGit", "ScriptedAgent"]
