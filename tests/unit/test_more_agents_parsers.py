"""The line parsers of the Codex, Gemini and Qwen adapters, the price table and the usage
arithmetic of cumulative sessions: hostile and unusual lines, never an exception."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from forgeline.adapters.agents.codex.parser import CodexParser
from forgeline.adapters.agents.gemini.parser import GeminiParser, api_message
from forgeline.adapters.agents.jsonl import subtract
from forgeline.adapters.agents.pricing import load_prices
from forgeline.adapters.agents.qwen.parser import QwenParser
from forgeline.domain.agent import (
    TOOL_OUTPUT_LIMIT,
    ErrorData,
    InitData,
    MessageData,
    RunStatus,
    StatusData,
    ToolResultData,
    ToolUseData,
    Usage,
)
from forgeline.domain.errors import ConfigurationError, ValidationError
from forgeline.domain.pricing import Price, PriceTable

Parser = CodexParser | GeminiParser | QwenParser


def line(obj: Any) -> bytes:
    """One JSON line as the CLI prints it."""
    return json.dumps(obj).encode()


@pytest.mark.parametrize("make", [CodexParser, GeminiParser, QwenParser])
@pytest.mark.parametrize(
    "garbage",
    [b"not json", b"[1, 2]", b'"a string"', b"\xff\xfe\x00", b"{" * 100_000, b"{", b"null"],
)
def test_garbled_lines_are_counted_not_raised(make: type[Parser], garbage: bytes) -> None:
    """A line that is not a JSON object gives no event and counts as bad."""
    parser = make()
    assert parser.feed(garbage) == []
    assert parser.bad_lines == 1
    assert parser.verdict is None


@pytest.mark.parametrize("make", [CodexParser, GeminiParser, QwenParser])
def test_unknown_types_are_tolerated(make: type[Parser]) -> None:
    """A type a later CLI adds is counted, not an error."""
    parser = make()
    assert parser.feed(line({"type": "brand.new", "x": 1})) == []
    assert parser.bad_lines == 0
    assert sum(parser.unknown.values()) == 1


def test_codex_run_maps_to_normalized_events() -> None:
    """A codex run: init with the session, the warning item as a status, a command as
    tool_use + tool_result, the answer, and a verdict with cached tokens counted apart."""
    parser = CodexParser(model="m", cwd="/w")
    out = []
    for obj in [
        {"type": "thread.started", "thread_id": "t-1"},
        {"type": "item.completed", "item": {"id": "0", "type": "error", "message": "metadata"}},
        {"type": "turn.started"},
        {"type": "item.started", "item": {"id": "1", "type": "command_execution", "command": "ls"}},
        {
            "type": "item.completed",
            "item": {
                "id": "1",
                "type": "command_execution",
                "command": "ls",
                "aggregated_output": "a\n",
                "exit_code": 2,
                "status": "failed",
            },
        },
        {"type": "item.completed", "item": {"id": "2", "type": "agent_message", "text": "ok"}},
        {
            "type": "turn.completed",
            "usage": {"input_tokens": 200, "cached_input_tokens": 40, "output_tokens": 20},
        },
    ]:
        out += parser.feed(line(obj))
    datas = [e.data for e in out]
    assert datas[0] == InitData(model="m", cwd="/w")
    assert isinstance(datas[1], StatusData)
    assert datas[1].state == "warning"
    assert datas[3] == ToolUseData(id="1", name="command_execution", input={"command": "ls"})
    assert datas[4] == ToolResultData(id="1", output="a\n", is_error=True)
    assert datas[5] == MessageData(role="assistant", text="ok")
    assert all(e.session_id == "t-1" for e in out)
    assert parser.verdict is not None
    result = parser.verdict.result
    assert result.status is RunStatus.SUCCEEDED
    assert result.text == "ok"
    assert result.usage == Usage(input_tokens=160, output_tokens=20, cache_read_tokens=40)


def test_codex_retries_are_status_and_a_failed_turn_carries_the_message() -> None:
    """ "Reconnecting... 2/5" is a retry status; turn.failed is a failed verdict with the
    API's message, the error event before it."""
    parser = CodexParser()
    retry = parser.feed(line({"type": "error", "message": "Reconnecting... 2/5 (boom)"}))
    assert isinstance(retry[0].data, StatusData)
    assert retry[0].data.attempt == 2
    error = parser.feed(line({"type": "error", "message": "401 Unauthorized: bad key"}))
    assert error[0].data == ErrorData(kind="api_error", message="401 Unauthorized: bad key")
    parser.feed(line({"type": "turn.failed", "error": {"message": "401 Unauthorized: bad key"}}))
    assert parser.verdict is not None
    assert parser.verdict.is_error
    assert parser.verdict.result.status is RunStatus.FAILED
    assert parser.verdict.result.text == "401 Unauthorized: bad key"


def test_oversized_tool_input_and_output_are_cut() -> None:
    """A command of megabytes and its output are cut to the tool output limit."""
    parser = CodexParser()
    huge = "x" * (TOOL_OUTPUT_LIMIT * 4)
    item = {"id": "1", "type": "command_execution", "command": huge, "aggregated_output": huge}
    use, result = parser.feed(line({"type": "item.completed", "item": item}))
    assert isinstance(use.data, ToolUseData)
    assert len(use.data.input["command"]) < TOOL_OUTPUT_LIMIT + 100
    assert isinstance(result.data, ToolResultData)
    assert len(result.data.output) < TOOL_OUTPUT_LIMIT + 100


def test_gemini_joins_deltas_and_unwraps_api_errors() -> None:
    """Text pieces become one message; the result's "[API Error: {json}]" becomes the
    API's own message; a warning is a status."""
    parser = GeminiParser(cwd="/w")
    out = parser.feed(line({"type": "init", "session_id": "s", "model": "gm"}))
    out += parser.feed(line({"type": "message", "role": "user", "content": "prompt"}))
    out += parser.feed(
        line({"type": "message", "role": "assistant", "content": "he", "delta": True})
    )
    out += parser.feed(
        line({"type": "message", "role": "assistant", "content": "y", "delta": True})
    )
    out += parser.feed(line({"type": "error", "severity": "warning", "message": "slow"}))
    wrapped = '[API Error: {"error":{"code":401,"message":"bad key","status":"UNAUTHENTICATED"}}]'
    out += parser.feed(
        line({"type": "result", "status": "error", "error": {"message": wrapped}, "stats": {}})
    )
    datas = [e.data for e in out]
    assert datas[0] == InitData(model="gm", cwd="/w")
    assert datas[1] == MessageData(role="assistant", text="hey")
    assert isinstance(datas[2], StatusData)
    assert parser.verdict is not None
    assert parser.verdict.result.status is RunStatus.FAILED
    assert parser.verdict.result.text == "API error 401: bad key"
    assert parser.verdict.error_kind == "api_error"
    assert api_message("plain words") == "plain words"


def test_qwen_api_error_success_is_a_failure() -> None:
    """Qwen prints an API failure as a successful result: it becomes an error event and a
    failed verdict; cached tokens are taken out of the input count."""
    parser = QwenParser()
    message = {
        "type": "assistant",
        "session_id": "q",
        "message": {"content": [{"type": "text", "text": "[API Error: 401 bad key]"}]},
    }
    [event] = parser.feed(line(message))
    assert event.data == ErrorData(kind="api_error", message="API error 401 bad key")
    parser.feed(
        line(
            {
                "type": "result",
                "subtype": "success",
                "is_error": False,
                "session_id": "q",
                "result": "[API Error: 401 bad key]",
                "usage": {"input_tokens": 100, "output_tokens": 5, "cache_read_input_tokens": 30},
            }
        )
    )
    assert parser.verdict is not None
    assert parser.verdict.result.status is RunStatus.FAILED
    assert parser.verdict.result.usage == Usage(
        input_tokens=70, output_tokens=5, cache_read_tokens=30
    )


def test_subtract_gives_the_runs_share_of_a_cumulative_total() -> None:
    """Totals 300/30 after 200/20: the run used 100/10; a total that went down is a fresh
    count and stands as it is."""
    assert subtract(Usage(300, 30), Usage(200, 20)) == Usage(100, 10)
    assert subtract(Usage(50, 5), Usage(200, 20)) == Usage(50, 5)


def test_price_table_estimates_and_refuses_bad_entries() -> None:
    """USD per million: input, output, cache reads at their own price; a provider prefix
    and case are ignored; bad tables are refused with the model named."""
    table = PriceTable.from_json({"models": {"M-1": {"input": 2, "output": 10, "cached": 1}}})
    usage = Usage(input_tokens=1_000_000, output_tokens=100_000, cache_read_tokens=1_000_000)
    assert table.estimate("vendor/m-1", usage) == pytest.approx(2 + 1 + 1)
    assert table.estimate("other", usage) is None
    assert table.estimate(None, usage) is None
    assert Price(1, 1).cost(Usage(cache_read_tokens=1_000_000)) == 1
    with pytest.raises(ValidationError, match="M-2"):
        PriceTable.from_json({"models": {"M-2": {"input": "x"}}})
    with pytest.raises(ValidationError):
        PriceTable.from_json([])


def test_the_default_price_file_loads(tmp_path: Path) -> None:
    """The table shipped in the package is valid; a broken file names itself."""
    assert load_prices().price("gpt-5") is not None
    broken = tmp_path / "prices.json"
    broken.write_text("{")
    with pytest.raises(ConfigurationError, match=r"prices\.json"):
        load_prices(broken)
