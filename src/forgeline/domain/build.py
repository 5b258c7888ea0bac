"""What a build produced: :class:`BuildResult`, its :class:`Artifacts` and the agent's
:class:`AgentSummary`.

The worker makes one when a build ends; the queue keeps its JSON (:meth:`BuildResult.to_json`)
as the task's result, and whoever reads a result back (the diff route, the dashboard, the
callback's payload) does so through :meth:`BuildResult.from_json`, so every artifact has one
name, here. The JSON is public (``GET /tasks/{id}`` shows it, the callback carries its output
and artifacts: DESIGN.md, "Callback payload"): only what a build did produce is in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from forgeline.domain.agent import AgentResult


@dataclass(frozen=True, slots=True)
class Artifacts:
    """What a build produced, as far as it got (kept when it failed later on)."""

    #: The commit the build pushed (or an earlier attempt of it did).
    commit_sha: str | None = None
    #: The review branch it pushed to (builds without ``auto_deploy``).
    branch: str | None = None
    #: Where the project deploys to (its ``deploy_url`` setting).
    deploy_url: str | None = None
    #: The number of the CI pipeline that builds the commit.
    pipeline: int | None = None
    #: How that pipeline ended (``success``, ``failure`` …).
    pipeline_status: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the artifacts produced (none is ``null``)."""
        shown = ((item.name, getattr(self, item.name)) for item in fields(self))
        return {name: value for name, value in shown if value is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Artifacts:
        """The artifacts of a stored result; a value of the wrong type counts as absent."""
        data = data or {}

        def text(name: str) -> str | None:
            value = data.get(name)
            return value if isinstance(value, str) else None

        pipeline = data.get("pipeline")
        return cls(
            commit_sha=text("commit_sha"),
            branch=text("branch"),
            deploy_url=text("deploy_url"),
            pipeline=pipeline if isinstance(pipeline, int) else None,
            pipeline_status=text("pipeline_status"),
        )


@dataclass(frozen=True, slots=True)
class AgentSummary:
    """How the agent's run of a build ended (its ``result`` without the text)."""

    provider: str
    result: AgentResult

    def to_json(self) -> dict[str, Any]:
        """The ``agent`` object of a task's result."""
        return {
            "provider": self.provider,
            "status": self.result.status.value,
            "session_id": self.result.session_id,
            "num_turns": self.result.num_turns,
            "duration_ms": self.result.duration_ms,
            "cost_usd": self.result.cost_usd,
            "cost_source": self.result.cost_source.value,
            "usage": self.result.usage.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class BuildResult:
    """A finished build's result: the output (the agent's last words, and why CI failed),
    what it produced, how its agent ran, and the error that failed it."""

    output: str
    artifacts: Artifacts = field(default_factory=Artifacts)
    agent: AgentSummary | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The task's stored ``result``; ``error`` only when the build failed."""
        shown: dict[str, Any] = {
            "output": self.output,
            "artifacts": self.artifacts.to_json(),
            "agent": self.agent.to_json() if self.agent is not None else None,
        }
        if self.error:
            shown["error"] = self.error
        return shown

    @staticmethod
    def stored_artifacts(result: Mapping[str, Any] | None) -> Artifacts:
        """The artifacts of a task's stored ``result`` (none for a task without one)."""
        return Artifacts.from_json((result or {}).get("artifacts"))

    @staticmethod
    def stored_cost(result: Mapping[str, Any] | None) -> float | None:
        """What the agent of a task's stored ``result`` cost, when it said."""
        agent = (result or {}).get("agent")
        cost = agent.get("cost_usd") if isinstance(agent, Mapping) else None
        return float(cost) if isinstance(cost, int | float) else None
