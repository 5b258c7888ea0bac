"""Qwen Code's ``stream-json`` lines: Claude Code's shape, read by Claude's parser.

Two differences are handled here. A failed model call does not fail the result: the CLI
prints an assistant message ``[API Error: 401 …]`` and a result with ``is_error: false``
whose text is that message; both are turned into an ``error`` event and a failed verdict.
And its ``input_tokens`` include the cached ones (they come from an OpenAI-style
``prompt_tokens``), which forgeline counts apart.
"""

from __future__ import annotations

import re
from dataclasses import replace

from forgeline.adapters.agents.claude_code.parser import StreamJsonParser
from forgeline.domain.agent import (
    AgentEvent,
    ErrorData,
    MessageData,
    RunStatus,
    Usage,
)

PROVIDER = "qwen"

_API_ERROR = re.compile(r"^\[API Error: (.*)\]\s*$", re.DOTALL)


def api_error(text: str) -> str | None:
    """The message of an ``[API Error: …]`` text, or None for any other text."""
    match = _API_ERROR.match(text.strip())
    return f"API error {match.group(1)}" if match else None


class QwenParser(StreamJsonParser):
    """Claude's stream-json parser with Qwen's API failures and token counts."""

    def __init__(self, *, provider: str = PROVIDER, raw: bool = False) -> None:
        super().__init__(provider=provider, raw=raw)

    def feed(self, line: bytes | str) -> list[AgentEvent]:
        """Claude's events, with API failures as errors and a failed verdict."""
        had_verdict = self.verdict is not None
        events = [self._api_error(event) for event in super().feed(line)]
        if self.verdict is not None and not had_verdict:
            result = self.verdict.result
            usage = result.usage
            result = replace(
                result,
                usage=Usage(
                    input_tokens=max(0, usage.input_tokens - usage.cache_read_tokens),
                    output_tokens=usage.output_tokens,
                    cache_read_tokens=usage.cache_read_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                ),
            )
            message = api_error(result.text)
            if message is not None:
                result = replace(result, status=RunStatus.FAILED, text=message)
                self.verdict = replace(self.verdict, is_error=True, error_kind="api_error")
            self.verdict = replace(self.verdict, result=result)
        return events

    @staticmethod
    def _api_error(event: AgentEvent) -> AgentEvent:
        data = event.data
        if isinstance(data, MessageData) and data.role == "assistant":
            message = api_error(data.text)
            if message is not None:
                return replace(event, data=ErrorData(kind="api_error", message=message))
        return event
