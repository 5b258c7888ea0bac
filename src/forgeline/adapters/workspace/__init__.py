"""Where commands run: ``local`` (children of forgeline) or ``kubernetes`` (``kubectl exec``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forgeline.ports.workspace import Workspace
    from forgeline.settings import Settings


def build_workspace(settings: Settings) -> Workspace:
    """The workspace that ``settings.workspace`` names, configured from ``settings``."""
    if settings.workspace == "kubernetes":
        from forgeline.adapters.workspace.kubernetes import KubernetesWorkspace

        return KubernetesWorkspace.from_settings(settings)
    from forgeline.adapters.workspace.local import LocalWorkspace

    return LocalWorkspace()
