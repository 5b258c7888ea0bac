"""The stream-json parser: every mapping of reference §5/§6, tolerance, bounds."""

from __future__ import annotations

import json
from typing import Any

from forgeline.adapters.agents.claude_code.parser import StreamJsonParser
from forgeline.domain.agent import (
    TOOL_OUTPUT_LIMIT,
    AgentResult,
    ErrorData,
    InitData,
    MessageData,
    RunStatus,
    StatusData,
    ToolResultData,
    ToolUseData,
)

SID = "f1d71bd1-fc28-46a6-95e3-02aef8228f90"

# Verbatim lines from reference/claude-code-cli.md (paths rewritten there already).
INIT = (
    '{"type":"system","subtype":"init","cwd":"/srv/run/repo","session_id":"' + SID + '",'
    '"tools":["Task","Bash","Write"],"mcp_servers":[],"model":"claude-opus-4-8[1m]",'
    '"permissionMode":"bypassPermissions","apiKeySource":"ANTHROPIC_API_KEY",'
    '"claude_code_version":"2.1.197","uuid":"4563fa58-d5e1-4c7d-bb9e-80eede7f390b"}'
)
TEXT = (
    '{"type":"assistant","message":{"id":"msg_6d7a","type":"message","role":"assistant",'
    '"model":"claude-opus-4-8","content":[{"type":"text","text":"I\'ll create hello.txt."}],'
    '"stop_reason":null,"usage":{"input_tokens":100,"output_tokens":1}},'
    '"parent_tool_use_id":null,"session_id":"' + SID + '","uuid":"fd18"}'
)
TOOL_USE = (
    '{"type":"assistant","message":{"id":"msg_6d7a","type":"message","role":"assistant",'
    '"content":[{"type":"tool_use","id":"toolu_f119","name":"Write","input":'
    '{"file_path":"/srv/run/repo/hello.txt","content":"hello from the fake API\\n"}}]},'
    '"session_id":"' + SID + '","uuid":"54d4"}'
)
TOOL_RESULT = (
    '{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_f119",'
    '"type":"tool_result","content":"File created successfully at: /srv/run/repo/hello.txt"}]},'
    '"session_id":"' + SID + '","uuid":"5c1c","timestamp":"2026-11-24T07:08:52.328Z",'
    '"tool_use_result":{"type":"create","filePath":"/srv/run/repo/hello.txt"}}'
)
RETRY = (
    '{"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,'
    '"retry_delay_ms":516.68,"error_status":500,"error":"server_error",'
    '"session_id":"' + SID + '","uuid":"2895"}'
)
RESULT_OK = (
    '{"type":"result","subtype":"success","is_error":false,"api_error_status":null,'
    '"duration_ms":205,"num_turns":2,"result":"done","stop_reason":"end_turn",'
    '"session_id":"' + SID + '","total_cost_usd":0.002,"usage":{"input_tokens":200,'
    '"cache_creation_input_tokens":7,"cache_read_input_tokens":3,"output_tokens":40},'
    '"permission_denials":[],"terminal_reason":"completed"}'
)
RESULT_API_ERROR = (
    '{"type":"result","subtype":"success","is_error":true,"api_error_status":500,'
    '"duration_ms":2600,"num_turns":1,"result":"API Error: 500 Internal server error.",'
    '"session_id":"' + SID + '","total_cost_usd":0,"usage":{"input_tokens":0,"output_tokens":0}}'
)
SYNTHETIC_ERROR = (
    '{"type":"assistant","message":{"id":"0b6d","model":"<synthetic>","role":"assistant",'
    '"content":[{"type":"text","text":"API Error: 500 Internal server error."}]},'
    '"session_id":"' + SID + '","error":"server_error"}'
)


def feed(parser: StreamJsonParser, line: str | bytes) -> list[Any]:
    """The ``data`` of each event the line produced."""
    return [event.data for event in parser.feed(line)]


def test_reference_run_maps_to_normalized_events() -> None:
    """init, text, tool_use, tool_result, result: in order, with session id and content."""
    parser = StreamJsonParser()
    lines = (INIT, TEXT, TOOL_USE, TOOL_RESULT, RESULT_OK)
    datas = [d for line in lines for d in feed(parser, line)]
    assert [d.type for d in datas] == ["init", "message", "tool_use", "tool_result", "result"]
    init, text, use, result_block, result = datas
    assert isinstance(init, InitData)
    assert init.model == "claude-opus-4-8[1m]"
    assert init.cwd == "/srv/run/repo"
    assert init.tools == ("Task", "Bash", "Write")
    assert text == MessageData(role="assistant", text="I'll create hello.txt.")
    assert isinstance(use, ToolUseData)
    assert use.name == "Write"
    assert use.input["file_path"] == "/srv/run/repo/hello.txt"
    assert isinstance(result_block, ToolResultData)
    assert result_block.id == "toolu_f119"
    assert result_block.output.startswith("File created successfully")
    assert not result_block.is_error
    assert isinstance(result, AgentResult)
    assert result.status is RunStatus.SUCCEEDED
    assert result.session_id == SID
    assert result.cost_usd == 0.002
    assert result.num_turns == 2
    assert result.usage.input_tokens == 200
    assert result.usage.output_tokens == 40
    assert result.usage.cache_read_tokens == 3
    assert result.usage.cache_write_tokens == 7
    assert parser.session_id == SID
    assert parser.cli_result is not None
    assert parser.cli_result.result == result


def test_events_carry_provider_and_session() -> None:
    """Each event has the provider name and the line's session id; seq is left to callers."""
    event = StreamJsonParser().feed(TEXT)[0]
    assert event.provider == "claude-code"
    assert event.session_id == SID
    assert event.seq == 0
    assert event.raw is None


def test_success_is_decided_by_is_error_not_subtype() -> None:
    """subtype success with is_error true (an API failure) is a failed result."""
    parser = StreamJsonParser()
    (result,) = feed(parser, RESULT_API_ERROR)
    assert result.status is RunStatus.FAILED
    assert "500" in result.text
    assert parser.cli_result is not None
    assert parser.cli_result.api_error_status == 500


def test_max_turns_result_takes_its_text_from_errors() -> None:
    """error_max_turns has no result field: the errors list explains the failure."""
    line = json.dumps(
        {
            "type": "result",
            "subtype": "error_max_turns",
            "is_error": True,
            "num_turns": 3,
            "errors": ["Reached maximum number of turns (2)"],
            "session_id": SID,
        }
    )
    parser = StreamJsonParser()
    (result,) = feed(parser, line)
    assert result.status is RunStatus.FAILED
    assert result.text == "Reached maximum number of turns (2)"
    assert result.num_turns == 3
    assert parser.cli_result is not None
    assert parser.cli_result.subtype == "error_max_turns"


def test_api_retry_is_a_retrying_status() -> None:
    """system/api_retry becomes status retrying with the attempt and the error detail."""
    (status,) = feed(StreamJsonParser(), RETRY)
    assert isinstance(status, StatusData)
    assert status.state == "retrying"
    assert status.attempt == 1
    assert status.detail["error_status"] == 500
    assert status.detail["error"] == "server_error"


def test_synthetic_api_error_message_is_an_error_event() -> None:
    """The CLI's synthetic assistant line for a failed API call becomes an error event."""
    (error,) = feed(StreamJsonParser(), SYNTHETIC_ERROR)
    assert error == ErrorData(kind="server_error", message="API Error: 500 Internal server error.")


def test_interruption_markers_and_tool_errors() -> None:
    """User text blocks become user messages; a tool error keeps is_error."""
    line = json.dumps(
        {
            "type": "user",
            "session_id": SID,
            "message": {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "a"}, {"type": "image"}],
                        "is_error": True,
                    },
                    {"type": "text", "text": "[Request interrupted by user for tool use]"},
                ],
            },
        }
    )
    result, marker = feed(StreamJsonParser(), line)
    assert result == ToolResultData(id="t1", output="a\n[image]", is_error=True)
    assert marker == MessageData(role="user", text="[Request interrupted by user for tool use]")


def test_unknown_and_bad_lines_are_counted_not_fatal() -> None:
    """Unknown types and subtypes are counted; non-JSON and non-object lines are skipped."""
    parser = StreamJsonParser()
    lines: list[str | bytes] = [
        "not json",
        '{"type": "assistant", "message": {"content": [',
        "[1, 2]",
        b"\xff\xfe",
        "[" * 100_000,  # deeper than the JSON decoder recurses
        "",
        '{"type": "stream_event", "event": {}}',
        '{"type": "system", "subtype": "task_started"}',
        '{"type": "rate_limit_event"}',
    ]
    for line in lines:
        assert feed(parser, line) == []
    assert parser.bad_lines == 5
    assert parser.unknown == {"stream_event": 1, "system/task_started": 1, "rate_limit_event": 1}
    assert feed(parser, TEXT)  # still parsing afterwards


def test_large_tool_output_and_input_are_cut() -> None:
    """A 5 MB tool result and a 5 MB Write input are cut to the tool output limit."""
    big = "a" * 5_000_000
    line = json.dumps(
        {
            "type": "user",
            "session_id": SID,
            "message": {"content": [{"type": "tool_result", "tool_use_id": "t", "content": big}]},
            "tool_use_result": {"content": big},
        }
    )
    (result,) = feed(StreamJsonParser(), line)
    assert len(result.output) < TOOL_OUTPUT_LIMIT + 100
    assert "more characters cut" in result.output
    use_line = json.dumps(
        {
            "type": "assistant",
            "session_id": SID,
            "message": {
                "content": [
                    {"type": "tool_use", "id": "u", "name": "Write", "input": {"content": big}}
                ]
            },
        }
    )
    (use,) = feed(StreamJsonParser(), use_line)
    assert len(use.input["content"]) < TOOL_OUTPUT_LIMIT + 100


def test_raw_only_when_asked() -> None:
    """data.raw carries the CLI's line only with raw=True (the debug setting)."""
    event = StreamJsonParser(raw=True).feed(TEXT)[0]
    assert event.raw is not None
    assert event.raw["uuid"] == "fd18"
    assert "raw" in event.to_dict()["data"]
    assert "raw" not in StreamJsonParser().feed(TEXT)[0].to_dict()["data"]


def test_permission_denials_are_kept() -> None:
    """A default-mode run with refused tools succeeds but lists the refused tools."""
    line = json.dumps(
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "result": "ok",
            "permission_denials": [{"tool_name": "Write", "tool_use_id": "t"}],
        }
    )
    parser = StreamJsonParser()
    (result,) = feed(parser, line)
    assert result.status is RunStatus.SUCCEEDED
    assert parser.cli_result is not None
    assert parser.cli_result.permission_denials == ("Write",)
