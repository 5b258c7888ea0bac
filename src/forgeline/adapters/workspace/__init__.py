"""Where commands run: ``local`` (children of forgeline) or ``kubernetes`` (``kubectl exec``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forgeline.ports.workspace import Workspace
    from forgeline.settings import Settings


def build_workspace(settings: Settings, environ: Mapping[str, str] | None = None) -> Workspace:
    """The workspace that ``settings.workspace`` names, configured from ``settings``.

    ``environ`` (default: forgeline's own environment) supplies what ``kubectl`` itself
    needs (``KUBECONFIG``, ``HOME``, ``PATH``).
    """
    if settings.workspace == "kubernetes":
        from forgeline.adapters.workspace.kubernetes import KubernetesWorkspace

        return KubernetesWorkspace.from_settings(
            settings, os.environ if environ is None else environ
        )
    from forgeline.adapters.workspace.local import LocalWorkspace

    return LocalWorkspace()


def build_agent_workspace(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> Workspace:
    """Where agents run: the local workspace inside a bubblewrap sandbox unless
    ``FORGELINE_SANDBOX=none``; a pod (``kubernetes``) is its own sandbox."""
    if settings.workspace == "local" and settings.sandbox == "bwrap":
        from forgeline.adapters.workspace.sandbox import BubblewrapWorkspace, SandboxConfig

        return BubblewrapWorkspace(
            SandboxConfig(
                bwrap=settings.bwrap_bin,
                uid=settings.sandbox_uid,
                gid=settings.sandbox_gid,
                read_only=tuple(str(p) for p in settings.sandbox_read_only),
            )
        )
    return build_workspace(settings, environ)
