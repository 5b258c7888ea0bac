"""Prometheus metrics of one forgeline process, in a registry of its own.

Counters and the histogram are fed as things happen in this process (builds its workers
finish, callback attempts its dispatcher makes); gauges of shared state (tasks by
status, callbacks pending) are read from the database when ``/metrics`` is scraped, so
every process reports the same queue whichever worker did the work.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from forgeline.domain.callbacks import CallbackDelivery, DeliveryAttempt, DeliveryStatus
from forgeline.domain.task import TaskStatus
from forgeline.ports.callbacks import CallbackOutbox
from forgeline.ports.queue import WorkQueue

#: Build durations run from seconds (nothing to do) to the 30-minute default timeout.
_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class Metrics:
    """The process's metrics; ``render()`` gives the Prometheus text format."""

    def __init__(self, *, queue: WorkQueue, outbox: CallbackOutbox | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.queue = queue
        self.outbox = outbox
        self.builds = Counter(
            "forgeline_builds",
            "Builds finished by this process, by final status",
            ["status"],
            registry=self.registry,
        )
        self.build_duration = Histogram(
            "forgeline_build_duration_seconds",
            "Wall time of finished builds",
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.agent_cost = Counter(
            "forgeline_agent_cost_usd",
            "Model cost reported by agents",
            ["provider"],
            registry=self.registry,
        )
        self.callback_attempts = Counter(
            "forgeline_callback_deliveries",
            "Callback delivery attempts, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.tasks = Gauge(
            "forgeline_tasks", "Tasks in the queue, by status", ["status"], registry=self.registry
        )
        self.queue_depth = Gauge(
            "forgeline_queue_depth", "Tasks waiting to run", registry=self.registry
        )
        self.callbacks_pending = Gauge(
            "forgeline_callbacks_pending", "Callbacks not yet delivered", registry=self.registry
        )

    def build_finished(
        self, status: str, duration_s: float, cost_usd: float, provider: str
    ) -> None:
        """Count a build this process finished."""
        self.builds.labels(status=status).inc()
        self.build_duration.observe(duration_s)
        if cost_usd > 0:
            self.agent_cost.labels(provider=provider).inc(cost_usd)

    def callback_attempt(self, _delivery: CallbackDelivery, attempt: DeliveryAttempt) -> None:
        """Count one callback attempt (the dispatcher's observer)."""
        self.callback_attempts.labels(outcome=str(attempt.outcome)).inc()

    async def render(self) -> bytes:
        """Refresh the gauges from the database, then the text exposition format."""
        for status in TaskStatus:
            self.tasks.labels(status=status.value).set(await self.queue.count(status=status))
        self.queue_depth.set(await self.queue.count(status=TaskStatus.QUEUED))
        if self.outbox is not None:
            self.callbacks_pending.set(await self.outbox.count(DeliveryStatus.PENDING))
        return generate_latest(self.registry)
