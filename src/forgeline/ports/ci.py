"""The CIProvider port: the CI server that builds and deploys pushed commits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from forgeline.domain.secrets import Secret


@dataclass(frozen=True, slots=True)
class PipelineStatus:
    """A pipeline's state as the CI server reports it."""

    number: int
    status: str
    commit: str | None = None
    failed_step: str | None = None
    url: str | None = None

    @property
    def is_final(self) -> bool:
        """True once the pipeline can no longer change."""
        return self.status in {"success", "failure", "error", "killed", "declined", "skipped"}


class CIProvider(Protocol):
    """A CI server (Woodpecker). Every call is bounded by the client's timeouts and retried
    with backoff on connection errors and 5xx; failures raise ``ExternalServiceError``."""

    async def activate(self, repo_full_name: str) -> int:
        """Look the repository up and activate it (already active is fine); its CI id."""
        ...

    async def set_secrets(self, repo_id: int, secrets: Mapping[str, Secret]) -> None:
        """Create or update repository secrets for ``push`` and ``manual`` events."""
        ...

    async def find_pipeline(
        self, repo_id: int, commit: str, timeout_s: float
    ) -> PipelineStatus | None:
        """The pipeline started for ``commit``, waiting up to ``timeout_s`` for it to appear."""
        ...

    async def trigger(
        self, repo_id: int, branch: str, variables: Mapping[str, str]
    ) -> PipelineStatus | None:
        """Start a ``manual`` pipeline; ``None`` when the server says nothing runs (204)."""
        ...

    async def follow(self, repo_id: int, number: int, timeout_s: float) -> PipelineStatus:
        """Poll the pipeline until it is final or ``timeout_s`` passes."""
        ...

    async def cancel(self, repo_id: int, number: int) -> None:
        """Stop a running pipeline; a finished one is left alone."""
        ...
