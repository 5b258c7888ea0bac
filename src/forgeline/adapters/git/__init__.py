"""The git adapter: real ``git`` through the ``Workspace`` port (locally or in a pod)."""

from forgeline.adapters.git.cli import GitCli

__all__ = ["GitCli"]
