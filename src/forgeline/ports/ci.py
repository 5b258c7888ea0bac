"""The CIProvider port: the CI server that builds and deploys pushed commits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from forgeline.domain.secrets import Secret

#: Statuses after which a pipeline never changes again (Woodpecker's ``server/model/const.go``).
FINAL_STATUSES: Final = frozenset(
    {"success", "failure", "killed", "canceled", "error", "declined", "skipped"}
)
#: The events every deploy secret is given: pushes, and the ``manual`` pipelines that
#: forgeline triggers through the API (a secret is only handed to events it lists).
SECRET_EVENTS: Final = ("push", "manual")


@dataclass(frozen=True, slots=True)
class PipelineStep:
    """One step of a pipeline, as the CI server last reported it."""

    name: str
    state: str
    exit_code: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PipelineStatus:
    """A pipeline's state as the CI server reports it."""

    number: int
    status: str
    commit: str | None = None
    branch: str | None = None
    event: str | None = None
    #: The first step that failed (or errored, or was killed), when one did.
    failed_step: str | None = None
    #: The server's own explanation for an ``error`` status (e.g. a broken config file).
    error: str | None = None
    #: The pipeline's page in the CI server's web UI.
    url: str | None = None
    steps: tuple[PipelineStep, ...] = ()

    @property
    def is_final(self) -> bool:
        """True once the pipeline can no longer change."""
        return self.status in FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        """True for a pipeline that finished with ``success``."""
        return self.status == "success"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view for events and callback artifacts."""
        return {
            "number": self.number,
            "status": self.status,
            "commit": self.commit,
            "branch": self.branch,
            "event": self.event,
            "failed_step": self.failed_step,
            "error": self.error,
            "url": self.url,
        }


#: Called by :meth:`CIProvider.follow` each time the pipeline's status or steps change.
StatusListener = Callable[[PipelineStatus], Awaitable[None]]


class CIProvider(Protocol):
    """A CI server (Woodpecker).

    Every call is bounded by the client's timeouts and retried with backoff and jitter on
    connection errors and 5xx answers, a bounded number of times; failures raise
    ``ExternalServiceError`` carrying method, path, status and a body excerpt, never the
    token. Waiting calls (``find_pipeline``, ``follow``) take an explicit timeout; when the
    calling task is cancelled they stop at once and propagate the cancellation, leaving the
    pipeline alone (call :meth:`cancel` for that).
    """

    async def activate(self, repo_full_name: str, *, forge_remote_id: str | None = None) -> int:
        """Find the forge repository (by ``forge_remote_id`` when given, else by full
        name) and activate it; already active is fine. Returns the CI server's repo id."""
        ...

    async def set_secrets(self, repo_id: int, secrets: Mapping[str, Secret]) -> None:
        """Create or update repository secrets, each for the events in ``SECRET_EVENTS``."""
        ...

    async def find_pipeline(
        self, repo_id: int, commit: str, timeout_s: float, *, branch: str = "main"
    ) -> PipelineStatus | None:
        """The push pipeline of ``commit``, waiting up to ``timeout_s`` for it to appear;
        ``None`` when none appeared (e.g. the config filters skipped the push)."""
        ...

    async def trigger(
        self, repo_id: int, branch: str, variables: Mapping[str, str]
    ) -> PipelineStatus | None:
        """Start a ``manual`` pipeline; ``None`` when the server says nothing runs (204)."""
        ...

    async def get_pipeline(self, repo_id: int, number: int) -> PipelineStatus:
        """The pipeline's current status, with its steps."""
        ...

    async def follow(
        self,
        repo_id: int,
        number: int,
        timeout_s: float,
        *,
        on_change: StatusListener | None = None,
    ) -> PipelineStatus:
        """Poll until the pipeline is final or ``timeout_s`` passes; returns the last status
        seen (check ``is_final``: a timed-out pipeline is returned still running)."""
        ...

    async def cancel(self, repo_id: int, number: int) -> None:
        """Stop a pending or running pipeline; a finished one is left alone."""
        ...

    async def aclose(self) -> None:
        """Release the HTTP connections; idempotent."""
        ...
