"""The Qwen Code adapter: the real ``qwen`` CLI, stream-json in Claude Code's shape."""

from forgeline.adapters.agents.qwen.agent import QwenAgent

__all__ = ["QwenAgent"]
