"""The Gemini CLI adapter: the real ``gemini`` CLI, ``--output-format stream-json``."""

from forgeline.adapters.agents.gemini.agent import GeminiAgent

__all__ = ["GeminiAgent"]
