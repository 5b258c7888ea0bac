"""Ports: the operation-shaped interfaces that services depend on and adapters implement."""

from forgeline.ports.agent import CodeAgent
from forgeline.ports.ci import CIProvider, PipelineStatus
from forgeline.ports.credentials import CredentialInfo, CredentialStore
from forgeline.ports.queue import Enqueued, WorkQueue
from forgeline.ports.store import Store
from forgeline.ports.templates import (
    RenderResult,
    TemplateInfo,
    TemplateProvider,
    TemplateVariable,
)
from forgeline.ports.workspace import CommandResult, Process, Workspace

__all__ = [
    "CIProvider",
    "CodeAgent",
    "CommandResult",
    "CredentialInfo",
    "CredentialStore",
    "Enqueued",
    "PipelineStatus",
    "Process",
    "RenderResult",
    "Store",
    "TemplateInfo",
    "TemplateProvider",
    "TemplateVariable",
    "WorkQueue",
    "Workspace",
]
