"""Work tasks: what the queue holds, and the build spec a build task carries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from forgeline.domain.agent import DEFAULT_TIMEOUT_S, AgentProvider, check_timeout
from forgeline.domain.errors import PromptRequiredError, ValidationError


class TaskStatus(StrEnum):
    """Where a task is in its life: ``queued → running → completed | failed | cancelled``.

    A retryable failure puts a running task back to ``queued`` (with a later ``run_after``);
    ``failed`` is final ("dead").
    """

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True once the task can no longer change."""
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class WorkTask:
    """One unit of queued work, as the queue stores it.

    ``lease_token`` is the fencing token of the current (or last) claim: it grows with
    every claim, so a worker holding an older token can no longer change the task.
    ``request_hash`` is the digest of the request that made the task, kept beside its
    ``idempotency_key`` (None for tasks stored before it was recorded). ``seq`` is its
    place in the order tasks were enqueued in (first in, first out; a paging position).
    """

    id: str
    kind: str
    payload: Mapping[str, Any]
    status: TaskStatus
    priority: int
    attempts: int
    max_attempts: int
    created_at: datetime
    updated_at: datetime
    run_after: datetime
    concurrency_key: str | None = None
    idempotency_key: str | None = None
    worker: str | None = None
    lease_token: int = 0
    lease_expires_at: datetime | None = None
    cancel_requested: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_error: str | None = None
    result: Mapping[str, Any] | None = None
    request_hash: str | None = None
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's claim on a task: valid while ``token`` is the task's current lease token."""

    task: WorkTask
    worker: str
    token: int
    expires_at: datetime

    @property
    def task_id(self) -> str:
        """The leased task's id."""
        return self.task.id


#: Largest accepted prompt, in characters: far beyond any real instruction, small enough
#: that one request cannot fill the database.
MAX_PROMPT_CHARS: int = 100_000


@dataclass(frozen=True, slots=True)
class BuildSpec:
    """A build request of DESIGN.md: what to ask the agent, and what to do with the result.

    ``continue_session`` (``"continue"`` in JSON) asks to resume the agent session of the
    project's newest completed build with the same provider, found when the build starts
    (so it follows the build queued before it); ``resume_session`` names one instead.
    """

    prompt: str
    template: str | None = None
    variables: Mapping[str, Any] = field(default_factory=dict)
    auto_deploy: bool = True
    callback_url: str | None = None
    provider: str | None = None
    model: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    resume_session: str | None = None
    continue_session: bool = False

    def validate(self) -> BuildSpec:
        """Raise a :class:`ValidationError` subclass for a spec that can never build."""
        if not self.prompt or not self.prompt.strip():
            raise PromptRequiredError
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ValidationError(f"prompt is longer than {MAX_PROMPT_CHARS} characters")
        check_timeout("timeout_s", self.timeout_s)
        if self.continue_session and self.resume_session:
            raise ValidationError(
                "continue resumes the project's last session; resume_session names one:"
                " give one of them",
                field="continue",
            )
        return self

    def to_payload(self) -> dict[str, Any]:
        """The JSON payload stored with the queued task."""
        return {
            "prompt": self.prompt,
            "template": self.template,
            "variables": dict(self.variables),
            "auto_deploy": self.auto_deploy,
            "callback_url": self.callback_url,
            "provider": self.provider,
            "model": self.model,
            "timeout_s": self.timeout_s,
            "resume_session": self.resume_session,
            "continue": self.continue_session,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> BuildSpec:
        """Inverse of :meth:`to_payload`."""
        return cls(
            prompt=payload["prompt"],
            template=payload.get("template"),
            variables=payload.get("variables") or {},
            auto_deploy=bool(payload.get("auto_deploy", True)),
            callback_url=payload.get("callback_url"),
            provider=payload.get("provider") or None,
            model=payload.get("model"),
            timeout_s=float(payload.get("timeout_s") or DEFAULT_TIMEOUT_S),
            resume_session=payload.get("resume_session"),
            continue_session=bool(payload.get("continue", False)),
        )


__all__ = ["AgentProvider", "BuildSpec", "Lease", "TaskStatus", "WorkTask"]
