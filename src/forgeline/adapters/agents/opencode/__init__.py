"""The OpenCode adapter: an HTTP/SSE client of ``opencode serve``."""

from forgeline.adapters.agents.opencode.agent import OpenCodeAgent

__all__ = ["OpenCodeAgent"]
