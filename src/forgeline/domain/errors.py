"""The one error tree of forgeline.

Every failure that crosses a module boundary is one of these. Adapters translate foreign
exceptions (``OSError``, ``httpx.HTTPError``, ``psycopg.Error`` …) into them at their edge,
always ``raise … from exc``; the API maps them to HTTP statuses in one function.

::

    ForgelineError
    ├── ValidationError                 bad input, detected before anything starts (422)
    │   ├── PromptRequiredError
    │   ├── InvalidTimeoutError
    │   ├── InvalidProjectNameError
    │   ├── TemplateVariablesError
    │   ├── InvalidCallbackUrlError     scheme, host or address not allowed for callbacks
    │   └── IdempotencyKeyReusedError   an Idempotency-Key sent again with another request
    ├── NotFoundError                   (404)
    │   ├── UnknownProviderError
    │   ├── ProjectNotFoundError
    │   ├── TaskNotFoundError
    │   ├── TemplateNotFoundError
    │   ├── TokenNotFoundError
    │   ├── NoCommitError               a task that pushed no commit has no diff
    │   └── CredentialNotFoundError
    │       └── MissingCredentialsError  a project names credentials no scope holds (424)
    ├── ConflictError                   (409)
    │   ├── DuplicateProviderError
    │   ├── ProjectExistsError
    │   └── TaskStateError              the task is not in a state that allows this
    ├── CapacityError                   too many queued builds (429)
    ├── AuthError                       (401 / 403)
    ├── QueueError
    │   └── LeaseLostError              a fenced worker touched a task it no longer owns
    ├── AgentError                      an agent could not be started or talked to
    │   └── AgentUnavailableError       binary missing, server unreachable (424)
    ├── WorkspaceError                  a command could not be run where builds run
    │   └── LineTooLongError            a command printed a line over the configured cap
    ├── GitError
    │   ├── PushRejectedError
    │   └── RemoteUnavailableError      a project's remote does not answer or refuses (424)
    ├── CredentialError                 wrong master key, tampered ciphertext
    ├── ExternalServiceError            an HTTP peer (Woodpecker, OpenCode) answered badly
    ├── TemplateError                   a template cannot be read or rendered
    ├── StorageError                    the database failed
    └── ConfigurationError              settings that cannot work together

Messages never carry secrets: callers pass names, not values.
"""

from __future__ import annotations

from collections.abc import Sequence


class ForgelineError(Exception):
    """Root of every error forgeline raises on purpose."""

    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(ForgelineError):
    """Input that can never succeed; reported before any work starts.

    ``field`` names the request field at fault when there is one (the message then starts
    with it); ``reason`` is the message without that prefix.
    """

    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class PromptRequiredError(ValidationError):
    """The prompt is empty or only whitespace."""

    code = "prompt_required"

    def __init__(self) -> None:
        super().__init__("a prompt is required and must not be blank")


class InvalidTimeoutError(ValidationError):
    """A timeout that is not a finite number in ``(0, maximum]``."""

    code = "invalid_timeout"

    def __init__(self, field: str, value: float, maximum: float) -> None:
        super().__init__(
            f"{field} must be a finite number of seconds in (0, {maximum:g}], got {value!r}"
        )
        self.field = field
        self.value = value
        self.maximum = maximum


class InvalidProjectNameError(ValidationError):
    """A project name outside ``[a-z0-9-]``, or of the wrong length."""

    code = "invalid_project_name"

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"invalid project name {name!r}: {reason}")
        self.name = name
        self.reason = reason


class TemplateVariablesError(ValidationError):
    """Template variables that are missing or of the wrong type."""

    code = "invalid_template_variables"

    def __init__(self, template: str, problems: dict[str, str]) -> None:
        detail = "; ".join(f"{name}: {why}" for name, why in sorted(problems.items()))
        super().__init__(f"template {template!r}: {detail}")
        self.template = template
        self.problems = dict(problems)


class InvalidCallbackUrlError(ValidationError):
    """A callback URL that forgeline will not call (bad shape, or a forbidden address).

    ``url`` is the display form (no credentials, query or fragment); ``reason`` says why.
    """

    code = "invalid_callback_url"

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"callback URL {url} refused: {reason}")
        self.url = url
        self.reason = reason


class IdempotencyKeyReusedError(ValidationError):
    """An ``Idempotency-Key`` already used for a different request by the same client."""

    code = "idempotency_key_reused"

    def __init__(self, key: str) -> None:
        super().__init__(
            f"the key {key!r} was already used for another request; a retry must send the"
            " same body, a new request needs a new key",
            field="Idempotency-Key",
        )
        self.key = key


class NotFoundError(ForgelineError):
    """Something named by the caller does not exist."""

    code = "not_found"


class UnknownProviderError(NotFoundError):
    """An agent provider name that is not registered."""

    code = "unknown_provider"

    def __init__(self, name: str, known: Sequence[str]) -> None:
        listing = ", ".join(known) if known else "none registered"
        super().__init__(f"unknown agent provider {name!r}; known providers: {listing}")
        self.name = name
        self.known = tuple(known)


class ProjectNotFoundError(NotFoundError):
    """No project of that name."""

    code = "project_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"no project named {name!r}")
        self.name = name


class TaskNotFoundError(NotFoundError):
    """No task with that id."""

    code = "task_not_found"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task with id {task_id!r}")
        self.task_id = task_id


class TemplateNotFoundError(NotFoundError):
    """No template of that name."""

    code = "template_not_found"

    def __init__(self, name: str, known: Sequence[str] = ()) -> None:
        listing = ", ".join(known) if known else "none"
        super().__init__(f"no template named {name!r}; known templates: {listing}")
        self.name = name
        self.known = tuple(known)


class TokenNotFoundError(NotFoundError):
    """No API token with that id (never created, or revoked)."""

    code = "token_not_found"

    def __init__(self, token_id: str) -> None:
        super().__init__(f"no API token with id {token_id!r}")
        self.token_id = token_id


class NoCommitError(NotFoundError):
    """A task that pushed no commit (yet, or ever): it has no diff."""

    code = "no_commit"

    def __init__(self, task_id: str, why: str) -> None:
        super().__init__(f"task {task_id!r} has no pushed commit: {why}")
        self.task_id = task_id


class CredentialNotFoundError(NotFoundError):
    """No credential of that name in the given scope."""

    code = "credential_not_found"

    def __init__(self, name: str, project: str | None = None) -> None:
        scope = f"project {project!r}" if project else "global scope"
        super().__init__(f"no credential named {name!r} in {scope}")
        self.name = name
        self.project = project


class MissingCredentialsError(CredentialNotFoundError):
    """A project's builds are declared to receive credentials that exist in no scope."""

    code = "credential_missing"

    def __init__(self, project: str | None, missing: dict[str, str]) -> None:
        # ``missing`` maps environment variable -> credential name; both are names only.
        listing = ", ".join(f"{name!r} (for {var})" for var, name in sorted(missing.items()))
        where = f"project {project!r}" if project else "the build"
        scopes = f"project {project!r} nor the global scope" if project else "the global scope"
        ForgelineError.__init__(
            self, f"{where} needs credentials that neither {scopes} holds: {listing}"
        )
        self.name = min(missing.values()) if missing else ""
        self.project = project
        self.missing = dict(missing)


class ConflictError(ForgelineError):
    """The request conflicts with the current state."""

    code = "conflict"


class DuplicateProviderError(ConflictError):
    """A provider name registered twice."""

    code = "duplicate_provider"

    def __init__(self, name: str) -> None:
        super().__init__(f"agent provider {name!r} is already registered")
        self.name = name


class ProjectExistsError(ConflictError):
    """A project of that name exists already."""

    code = "project_exists"

    def __init__(self, name: str) -> None:
        super().__init__(f"a project named {name!r} exists already")
        self.name = name


class TaskStateError(ConflictError):
    """The task's state does not allow the operation (e.g. cancel a finished task)."""

    code = "task_state"

    def __init__(self, task_id: str, state: str, operation: str) -> None:
        super().__init__(f"cannot {operation} task {task_id!r}: it is {state}")
        self.task_id = task_id
        self.state = state
        self.operation = operation


class CapacityError(ForgelineError):
    """A configured cap is reached (e.g. queued builds per project)."""

    code = "capacity"


class AuthError(ForgelineError):
    """Missing, unknown or insufficient credentials of the caller."""

    code = "unauthorized"

    def __init__(self, message: str, *, forbidden: bool = False) -> None:
        super().__init__(message)
        self.forbidden = forbidden


class QueueError(ForgelineError):
    """The work queue refused or failed an operation."""

    code = "queue"


class LeaseLostError(QueueError):
    """The caller's lease on a task expired and the task moved on (fencing)."""

    code = "lease_lost"

    def __init__(self, task_id: str, token: int) -> None:
        super().__init__(f"lease {token} on task {task_id!r} is no longer held")
        self.task_id = task_id
        self.token = token


class AgentError(ForgelineError):
    """An agent run could not be started or talked to."""

    code = "agent"

    def __init__(self, message: str, *, provider: str) -> None:
        super().__init__(message)
        self.provider = provider


class AgentUnavailableError(AgentError):
    """The agent's program is not installed or its server does not answer."""

    code = "agent_unavailable"


class WorkspaceError(ForgelineError):
    """A command could not be started where builds run."""

    code = "workspace"


class LineTooLongError(WorkspaceError):
    """A command printed a line longer than the reader's cap; the reader stopped there."""

    code = "line_too_long"

    def __init__(self, limit: int) -> None:
        super().__init__(f"output line longer than the {limit}-byte limit")
        self.limit = limit


class GitError(ForgelineError):
    """A git operation failed."""

    code = "git"


class PushRejectedError(GitError):
    """The remote refused a push; ``reason`` is git's own explanation."""

    code = "push_rejected"

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(f"push of {ref} rejected: {reason}")
        self.ref = ref
        self.reason = reason


class RemoteUnavailableError(GitError):
    """A project's remote repository cannot be read or written: its host does not answer
    or refuses, or it holds no such repository. Worth retrying once that is fixed."""

    code = "remote_unavailable"

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"repo_url: cannot use the remote {url}: {reason}")
        self.url = url
        self.reason = reason


class CredentialError(ForgelineError):
    """A credential cannot be decrypted: wrong key or tampered ciphertext."""

    code = "credential"


class ExternalServiceError(ForgelineError):
    """An HTTP peer answered with an error or garbage; the request context rides along."""

    code = "external_service"

    def __init__(
        self,
        message: str,
        *,
        service: str,
        method: str | None = None,
        path: str | None = None,
        status_code: int | None = None,
        body_excerpt: str | None = None,
    ) -> None:
        parts = [f"{service}: {message}"]
        if method and path:
            parts.append(f"({method} {path}")
            parts.append(f"-> {status_code})" if status_code is not None else ")")
        if body_excerpt:
            parts.append(f"body: {body_excerpt}")
        super().__init__(" ".join(parts))
        self.service = service
        self.method = method
        self.path = path
        self.status_code = status_code
        self.body_excerpt = body_excerpt


class TemplateError(ForgelineError):
    """A template that cannot be read or rendered: a broken ``copier.yml``, a Jinja error,
    or features forgeline never runs (tasks, migrations, Jinja extensions)."""

    code = "template"

    def __init__(self, template: str, reason: str) -> None:
        super().__init__(f"template {template!r}: {reason}")
        self.template = template
        self.reason = reason


class StorageError(ForgelineError):
    """The database failed or is unreachable."""

    code = "storage"


class ConfigurationError(ForgelineError):
    """Settings that cannot work (e.g. a PostgreSQL URL without the driver)."""

    code = "configuration"
