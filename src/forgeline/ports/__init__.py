"""Ports: the operation-shaped interfaces that services depend on and adapters implement."""

from forgeline.ports.agent import CodeAgent
from forgeline.ports.ci import CIProvider, PipelineStatus
from forgeline.ports.credentials import CredentialInfo, CredentialStore
from forgeline.ports.queue import Enqueued, NewTask, WorkQueue
from forgeline.ports.store import Store
from forgeline.ports.templates import TemplateInfo, TemplateProvider, TemplateVariable
from forgeline.ports.workspace import CommandResult, Process, Workspace

__all__ = [
    "CIProvider",
    "CodeAgent",
    "CommandResult",
    "CredentialInfo",
    "CredentialStore",
    "Enqueued",
    "NewTask",
    "PipelineStatus",
    "Process",
    "Store",
    "TemplateInfo",
    "TemplateProvider",
    "TemplateVariable",
    "WorkQueue",
    "Workspace",
]
