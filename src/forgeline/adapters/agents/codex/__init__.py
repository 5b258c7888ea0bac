"""The Codex adapter: the real ``codex`` CLI, ``codex exec --json``."""

from forgeline.adapters.agents.codex.agent import CodexAgent

__all__ = ["CodexAgent"]
