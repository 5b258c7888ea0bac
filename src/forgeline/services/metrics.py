"""Prometheus metrics of one forgeline process, in a registry of its own.

Counters and histograms are fed as things happen in this process (HTTP requests it
answers, builds and build steps its workers finish, callback attempts its dispatcher
makes); gauges of shared state (tasks by status, callbacks pending) are read from the
database when ``/metrics`` is scraped, so every process reports the same queue whichever
worker did the work. Labels are bounded sets: HTTP requests are counted by route template
(``/tasks/{task_id}``), never by the path a client sent.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from forgeline.domain.callbacks import CallbackDelivery, DeliveryAttempt, DeliveryStatus
from forgeline.domain.task import TaskStatus
from forgeline.ports.callbacks import CallbackOutbox
from forgeline.ports.queue import WorkQueue

#: Build durations run from seconds (nothing to do) to the 30-minute default timeout.
_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
#: API answers take milliseconds; an event stream lasts as long as its build.
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600)
#: Steps run from a local git command (milliseconds) to the agent and CI (the build's time).
_STEP_BUCKETS = (0.05, 0.25, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class Metrics:
    """The process's metrics; ``render()`` gives the Prometheus text format."""

    def __init__(self, *, queue: WorkQueue, outbox: CallbackOutbox | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.queue = queue
        self.outbox = outbox
        self.builds = Counter(
            "forgeline_builds",
            "Builds finished by this process, by final status and agent provider",
            ["status", "provider"],
            registry=self.registry,
        )
        self.build_duration = Histogram(
            "forgeline_build_duration_seconds",
            "Wall time of finished builds, by agent provider",
            ["provider"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.step_duration = Histogram(
            "forgeline_build_step_duration_seconds",
            "Wall time of finished build steps (checkout, agent, commit, push, ci), by outcome",
            ["step", "outcome"],
            buckets=_STEP_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "forgeline_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "forgeline_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route template",
            ["route", "method"],
            buckets=_HTTP_BUCKETS,
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
        self.builds.labels(status=status, provider=provider).inc()
        self.build_duration.labels(provider=provider).observe(duration_s)
        if cost_usd > 0:
            self.agent_cost.labels(provider=provider).inc(cost_usd)

    def step_finished(self, step: str, outcome: str, duration_s: float) -> None:
        """Time one finished step of a build."""
        self.step_duration.labels(step=step, outcome=outcome).observe(duration_s)

    def http_request(self, route: str, method: str, status: int, duration_s: float) -> None:
        """Count one answered HTTP request (``route`` is its template)."""
        self.http_requests.labels(route=route, method=method, status=str(status)).inc()
        self.http_duration.labels(route=route, method=method).observe(duration_s)

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
