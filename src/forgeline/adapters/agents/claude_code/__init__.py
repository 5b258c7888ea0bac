"""The Claude Code adapter: the real ``claude`` CLI in stream-json mode."""

from forgeline.adapters.agents.claude_code.agent import ClaudeCodeAgent

__all__ = ["ClaudeCodeAgent"]
