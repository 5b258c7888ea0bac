"""The HTTP API's contract: every request body and every answer as a pydantic model.

``/openapi.json`` is generated from these, and the typed client (:mod:`forgeline.client`)
reads answers into the very same models, so the server, its document and its client
cannot disagree. Timestamps are RFC 3339 in UTC with milliseconds and ``Z``
(:data:`Timestamp`) everywhere; errors have one shape (:class:`ErrorEnvelope`).

This module imports pydantic, the domain and the build request's shape (no FastAPI): the
client loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    model_serializer,
)

from forgeline.domain.agent import DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S, EventType
from forgeline.domain.callbacks import CallbackDelivery, display_url
from forgeline.domain.clock import format_time
from forgeline.domain.inputs import MAX_JSON_DEPTH, map_json
from forgeline.domain.project import Project
from forgeline.domain.task import BuildSpec, TaskStatus, WorkTask
from forgeline.entrypoints.api.fields import (
    CredentialName,
    EnvVar,
    JsonObject,
    Name,
    ProjectName,
    Prompt,
    SecretValue,
    Url,
)
from forgeline.ports.credentials import CredentialInfo
from forgeline.ports.store import ApiToken
from forgeline.ports.templates import TemplateInfo
from forgeline.services.builds import BUILD_KIND, BuildRequest

#: A point in time as every answer shows it: ``2026-11-24T07:08:52.328Z``.
Timestamp = Annotated[
    datetime,
    PlainSerializer(format_time, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339, UTC, milliseconds, Z",
            "examples": ["2026-11-24T07:08:52.328Z"],
        }
    ),
]


class _In(BaseModel):
    """A request body: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


def shown(value: Any) -> Any:
    """A stored free-form JSON value as an answer shows it: cut at the depth requests may
    have (older versions stored deeper ones, which the serializers cannot handle)."""
    return map_json(value, max_depth=MAX_JSON_DEPTH)


# --- errors ----------------------------------------------------------------------------------


class ErrorField(BaseModel):
    """One field at fault: where (``variables.title``, ``prompt``), why, and the rule."""

    field: str
    message: str
    type: str


class ErrorDetail(BaseModel):
    """What went wrong: a stable ``code`` for programs, a ``message`` for people."""

    code: str = Field(examples=["project_not_found"])
    message: str
    fields: list[ErrorField] | None = Field(
        None, description="the fields at fault, for a request that is refused for its content"
    )
    retry_after_s: int | None = Field(
        None, description="with 429 and 503: seconds to wait, as in the Retry-After header"
    )


class ErrorEnvelope(BaseModel):
    """The body of every error answer, whatever its status."""

    error: ErrorDetail


# --- health ----------------------------------------------------------------------------------


class Health(BaseModel):
    """``GET /healthz``: the process answers."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """``GET /readyz``: the database answers."""

    status: Literal["ready"]


# --- projects --------------------------------------------------------------------------------


class ProjectIn(_In):
    """``POST /projects``."""

    name: ProjectName = Field(description="lowercase letters, digits and inner hyphens")
    template: Name | None = None
    variables: JsonObject = Field(default_factory=dict)
    repo_url: Url | None = Field(
        None,
        description="a forge URL (https://, http://, ssh://, user@host:path); default: an"
        " embedded repository under the git base",
    )
    credentials: dict[EnvVar, CredentialName] = Field(
        default_factory=dict, description="environment variable → credential name"
    )
    settings: JsonObject = Field(default_factory=dict)


class ProjectPatch(_In):
    """``PATCH /projects/{name}``: only the fields sent change. ``credentials`` and
    ``settings`` are merged key by key into the stored ones (``null`` removes a key);
    ``default_provider`` and ``default_model`` replace theirs (``null`` clears them)."""

    credentials: dict[EnvVar, CredentialName | None] = Field(
        default_factory=dict, description="environment variable → credential name, or null"
    )
    settings: JsonObject = Field(default_factory=dict)
    default_provider: Name | None = Field(
        None, description="the agent provider of builds that name none (see GET /agents)"
    )
    default_model: Name | None = Field(
        None, description="the model of builds that name none, with the default provider"
    )


class ProjectOut(BaseModel):
    """A project."""

    name: str
    repo_url: str
    default_branch: str
    template: str | None
    variables: dict[str, Any]
    credentials: dict[str, str]
    settings: dict[str, Any]
    state: Literal["creating", "ready"]
    default_provider: str | None
    default_model: str | None
    created_at: Timestamp | None
    updated_at: Timestamp | None

    @classmethod
    def of(cls, project: Project) -> Self:
        """The answer for ``project``."""
        return cls(
            name=project.name,
            repo_url=project.repo_url,
            default_branch=project.default_branch,
            template=project.template,
            variables=shown(project.variables),
            credentials=dict(project.credentials),
            settings=shown(project.settings),
            state="ready" if project.state == "ready" else "creating",
            default_provider=project.default_provider,
            default_model=project.default_model,
            created_at=project.created_at,
            updated_at=project.updated_at,
        )


class ProjectPage(BaseModel):
    """A page of projects by name; ``next_cursor`` asks for the next one (null: the last)."""

    items: list[ProjectOut]
    next_cursor: str | None


class ProjectDeleted(BaseModel):
    """What ``DELETE /projects/{name}`` removed and what it left in place."""

    name: str
    removed: list[str]
    kept: list[str]


# --- builds and tasks ------------------------------------------------------------------------


class BuildIn(_In):
    """``POST /project/{name}/build``: the build spec."""

    model_config = ConfigDict(extra="forbid", validate_by_name=False, validate_by_alias=True)

    prompt: Prompt
    template: Name | None = None
    variables: JsonObject = Field(default_factory=dict)
    auto_deploy: bool = True
    callback_url: Url | None = None
    provider: Name | None = Field(
        None, description="an agent provider of GET /agents; default: the project's, else the first"
    )
    model: Name | None = None
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_S)
    resume_session: Name | None = Field(None, description="an agent session id to resume")
    continue_session: bool = Field(
        False,
        alias="continue",
        description="resume the session of the project's newest completed build with the"
        " same provider (a new session when there is none); not with resume_session",
    )

    def spec(self) -> BuildSpec:
        """The domain's build spec."""
        return BuildSpec(**self.model_dump())


class Accepted(BaseModel):
    """A build the queue holds: a new one (202), or the one an ``Idempotency-Key`` sent
    before made (200, in whatever status it is now)."""

    task_id: str
    status: TaskStatus


class SpecOut(BaseModel):
    """A build task's spec as submitted (the callback URL without credentials or query)."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    prompt: str
    template: str | None
    variables: dict[str, Any]
    auto_deploy: bool
    callback_url: str | None
    provider: str | None
    model: str | None
    timeout_s: float
    resume_session: str | None
    continue_session: bool = Field(alias="continue")


class Usage(BaseModel):
    """Tokens an agent run used."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


class AgentSummary(BaseModel):
    """How the agent's run of a build ended."""

    provider: str
    status: str
    session_id: str | None = None
    num_turns: int = 0
    duration_ms: int = 0
    cost_usd: float = 0.0
    cost_source: Literal["reported", "estimated", "none"] = Field(
        "none", description="the CLI's own figure, an estimate from the price table, or none"
    )
    usage: Usage = Field(default_factory=Usage)


class Artifacts(BaseModel):
    """What a build produced, as far as it got: only what it did produce is there."""

    model_config = ConfigDict(extra="allow")

    commit_sha: str | None = None
    branch: str | None = Field(None, description="the review branch (builds without auto_deploy)")
    deploy_url: str | None = None
    pipeline: int | None = Field(None, description="the CI pipeline's number")
    pipeline_status: str | None = None

    @model_serializer(mode="wrap")
    def _produced(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        shown: dict[str, Any] = handler(self)
        return {key: value for key, value in shown.items() if value is not None}


class TaskResult(BaseModel):
    """What a finished build left: the agent's output, artifacts, why it failed."""

    model_config = ConfigDict(extra="allow")

    output: str | None = None
    artifacts: Artifacts = Field(default_factory=Artifacts)
    agent: AgentSummary | None = None
    error: str | None = None


class CallbackAttemptOut(BaseModel):
    """One try at delivering a callback."""

    number: int
    at: Timestamp
    duration_ms: int
    outcome: Literal["delivered", "retry", "gave_up", "refused"]
    status_code: int | None
    error: str | None


class CallbackOut(BaseModel):
    """A callback of a task and its delivery."""

    id: str = Field(description="the webhook-id and X-Forgeline-Delivery header")
    event: str
    url: str
    status: Literal["pending", "delivered", "failed"]
    created_at: Timestamp
    next_attempt_at: Timestamp | None
    finished_at: Timestamp | None
    attempts: list[CallbackAttemptOut]

    @classmethod
    def of(cls, delivery: CallbackDelivery) -> Self:
        """The answer for ``delivery`` (its URL without credentials or query)."""
        return cls(
            id=delivery.id,
            event=delivery.event,
            url=delivery.display_url,
            status=delivery.status.value,
            created_at=delivery.created_at,
            next_attempt_at=None if delivery.status.is_final else delivery.next_attempt_at,
            finished_at=delivery.finished_at,
            attempts=[
                CallbackAttemptOut(
                    number=a.number,
                    at=a.started_at,
                    duration_ms=a.duration_ms,
                    outcome=a.outcome.value,
                    status_code=a.status_code,
                    error=a.error,
                )
                for a in delivery.history
            ],
        )


class TaskOut(BaseModel):
    """A task: status, attempts, timestamps, result; for builds the spec, and in
    ``GET /tasks/{id}`` the callbacks."""

    task_id: str
    kind: str
    status: TaskStatus
    attempts: int
    max_attempts: int
    cancel_requested: bool
    worker: str | None
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    updated_at: Timestamp
    last_error: str | None
    result: TaskResult | None
    project_id: str | None = None
    spec: SpecOut | None = None
    retry_of: str | None = Field(None, description="the task this one re-runs")
    callbacks: list[CallbackOut] | None = Field(
        None, description="deliveries of the task's callback (only in GET /tasks/{id})"
    )

    @classmethod
    def of(
        cls,
        task: WorkTask,
        *,
        redact: Callable[[Any], Any],
        deliveries: Sequence[CallbackDelivery] | None = None,
    ) -> Self:
        """The answer for ``task``; every text in it passes ``redact`` (what an agent
        wrote may quote a secret)."""
        view: dict[str, Any] = {
            "task_id": task.id,
            "kind": task.kind,
            "status": task.status,
            "attempts": task.attempts,
            "max_attempts": task.max_attempts,
            "cancel_requested": task.cancel_requested,
            "worker": task.worker,
            "created_at": task.created_at,
            "started_at": task.started_at,
            "finished_at": task.finished_at,
            "updated_at": task.updated_at,
            "last_error": task.last_error,
            "result": shown(task.result),
        }
        if task.kind == BUILD_KIND:
            request = BuildRequest.from_task(task)
            spec = request.spec.to_payload()
            if spec["callback_url"]:
                spec["callback_url"] = display_url(spec["callback_url"])
            spec["variables"] = shown(spec["variables"])
            view.update(project_id=request.project, spec=spec, retry_of=request.retry_of)
        if deliveries is not None:
            view["callbacks"] = [CallbackOut.of(d).model_dump() for d in deliveries]
        return cls.model_validate(redact(view))


class TaskPage(BaseModel):
    """A page of tasks, newest first; ``next_cursor`` asks for the next one (null: the
    last)."""

    items: list[TaskOut]
    next_cursor: str | None


class EventOut(BaseModel):
    """One normalized event (DESIGN.md): the ``data:`` of an SSE message, whose ``id:`` is
    ``seq`` and whose ``event:`` is ``type``."""

    seq: int = Field(description="dense per task, from 1")
    task_id: str | None
    provider: str
    session_id: str | None
    type: EventType
    time: Timestamp
    data: dict[str, Any] = Field(description="the shape of its type (see DESIGN.md)")


# --- agents and templates --------------------------------------------------------------------


class Capabilities(BaseModel):
    """What a provider can do, and whether it can run here now."""

    available: bool
    version: str | None
    detail: str | None
    resume: bool
    streaming: bool
    permission_modes: list[str]
    models: list[str]
    cost: Literal["reported", "estimated", "none"] = Field(
        description="where results' cost_usd comes from: the CLI, the price table, nowhere"
    )
    tokens: bool = Field(description="results carry token counts")
    cancel: bool = Field(description="runs can be cancelled")


class AgentOut(BaseModel):
    """An agent provider."""

    name: str
    default: bool
    available: bool
    capabilities: Capabilities


class TemplateVariableOut(BaseModel):
    """One question a template asks."""

    name: str
    type: str
    help: str | None
    default: Any
    required: bool
    choices: list[Any]
    secret: bool


class TemplateOut(BaseModel):
    """A project template."""

    name: str
    description: str
    source: str
    deploy_url: str | None
    secrets: list[str]
    variables: list[TemplateVariableOut]

    @classmethod
    def of(cls, info: TemplateInfo) -> Self:
        """The answer for ``info``."""
        return cls.model_validate(info.to_dict())


# --- credentials and tokens ------------------------------------------------------------------


class CredentialIn(_In):
    """``PUT /credentials/{name}``: the value (never returned by any route)."""

    value: SecretValue


class CredentialOut(BaseModel):
    """A credential's name, scope and times; never its value."""

    name: str
    scope: Literal["global", "project"]
    project: str | None
    created_at: Timestamp
    updated_at: Timestamp
    last_used_at: Timestamp | None

    @classmethod
    def of(cls, info: CredentialInfo) -> Self:
        """The answer for ``info``."""
        return cls(
            name=info.name,
            scope="project" if info.project else "global",
            project=info.project,
            created_at=info.created_at,
            updated_at=info.updated_at,
            last_used_at=info.last_used_at,
        )


class TokenOut(BaseModel):
    """An API token's record: never the token."""

    id: str
    name: str
    role: Literal["admin", "builder"]
    projects: list[str] | None = Field(
        description="the projects a builder token is limited to; null: every project"
    )
    created_at: Timestamp
    last_used_at: Timestamp | None

    @classmethod
    def of(cls, token: ApiToken) -> Self:
        """The answer for ``token``."""
        return cls(
            id=token.id,
            name=token.name,
            role="builder" if token.role == "builder" else "admin",
            projects=None if token.projects is None else list(token.projects),
            created_at=token.created_at,
            last_used_at=token.last_used_at,
        )
