"""Plain data and rules: no I/O, no imports from the rest of forgeline."""

from forgeline.domain.agent import (
    DEFAULT_AVAILABILITY_TIMEOUT,
    MAX_TIMEOUT_S,
    AgentCapabilities,
    AgentEvent,
    AgentProvider,
    AgentRequest,
    AgentResult,
    ErrorData,
    EventData,
    InitData,
    MessageData,
    RunStatus,
    StatusData,
    ToolResultData,
    ToolUseData,
    Usage,
)
from forgeline.domain.project import Project, validate_project_name
from forgeline.domain.secrets import Secret
from forgeline.domain.task import BuildSpec, Lease, TaskStatus, WorkTask

__all__ = [
    "DEFAULT_AVAILABILITY_TIMEOUT",
    "MAX_TIMEOUT_S",
    "AgentCapabilities",
    "AgentEvent",
    "AgentProvider",
    "AgentRequest",
    "AgentResult",
    "BuildSpec",
    "ErrorData",
    "EventData",
    "InitData",
    "Lease",
    "MessageData",
    "Project",
    "RunStatus",
    "Secret",
    "StatusData",
    "TaskStatus",
    "ToolResultData",
    "ToolUseData",
    "Usage",
    "WorkTask",
    "validate_project_name",
]
