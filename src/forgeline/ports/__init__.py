"""Ports: the operation-shaped interfaces that services depend on and adapters implement."""

from forgeline.ports.agent import CodeAgent
from forgeline.ports.ci import CIProvider, PipelineStatus
from forgeline.ports.credentials import CredentialInfo, CredentialStore
from forgeline.ports.git import Checkout, Git, PushResult
from forgeline.ports.queue import Enqueued, WorkQueue
from forgeline.ports.store import Store
from forgeline.ports.templates import TemplateInfo, TemplateProvider, TemplateVariable
from forgeline.ports.workspace import CommandResult, Process, Workspace

__all__ = [
    "CIProvider",
    "Checkout",
    "CodeAgent",
    "CommandResult",
    "CredentialInfo",
    "CredentialStore",
    "Enqueued",
    "Git",
    "PipelineStatus",
    "Process",
    "PushResult",
    "Store",
    "TemplateInfo",
    "TemplateProvider",
    "TemplateVariable",
    "WorkQueue",
    "Workspace",
]
