"""The scripted Anthropic API itself: routing, SSE framing, JSON fallback, errors, recording."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.anthropic_server import (
    AnthropicServer,
    ApiError,
    ApiRequest,
    Reply,
    always,
    bash,
    hello_script,
    text,
)

SYSTEM = [{"type": "text", "text": "You are Claude.\n - Primary working directory: /srv/repo\n"}]


@pytest.fixture
def server() -> Iterator[AnthropicServer]:
    """A server on the reference script."""
    with AnthropicServer(hello_script) as running:
        yield running


def body(prompt: str, *, stream: bool) -> dict[str, Any]:
    """A request body shaped like the CLI's: a user turn followed by a system message."""
    payload: dict[str, Any] = {
        "model": "claude-opus-4-8",
        "system": SYSTEM,
        "tools": [{"name": "Write"}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>date</system-reminder>"},
                    {"type": "text", "text": prompt},
                ],
            },
            {"role": "system", "content": "agents list"},
        ],
    }
    if stream:
        payload["stream"] = True
    return payload


def sse_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of an SSE body."""
    out = []
    for frame in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_head_preconnect_and_routing_without_query(server: AnthropicServer) -> None:
    """HEAD / answers 200 empty; POST /v1/messages?beta=true is routed; others are 404."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        head = client.head("/")
        assert head.status_code == 200
        assert head.content == b""
        answer = client.post("/v1/messages?beta=true", json=body("hi", stream=False))
        assert answer.status_code == 200
        assert client.post("/v1/other", json={}).status_code == 404
    assert [(r.method, r.path) for r in server.requests] == [
        ("HEAD", "/"),
        ("POST", "/v1/messages"),
        ("POST", "/v1/other"),
    ]


def test_streaming_answer_follows_the_api_event_sequence(server: AnthropicServer) -> None:
    """A streaming request gets message_start … message_stop with text and tool_use deltas."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        response = client.post("/v1/messages?beta=true", json=body("create hello.txt", stream=True))
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert "ping" in names
    assert names.count("content_block_start") == 2
    text_out = "".join(
        d["delta"]["text"] for n, d in events if n == "content_block_delta" and d["index"] == 0
    )
    assert text_out == "I'll create hello.txt."
    tool_json = "".join(
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["index"] == 1
    )
    assert json.loads(tool_json) == {
        "file_path": "/srv/repo/hello.txt",
        "content": "hello from the fake API\n",
    }
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    request = server.message_requests[0]
    assert request.cwd == "/srv/repo"
    assert request.prompt == "create hello.txt"


def test_non_streaming_fallback_is_plain_json(server: AnthropicServer) -> None:
    """Without "stream" the answer is one JSON message (the CLI's fallback after a stall)."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        message = client.post("/v1/messages", json=body("create hello.txt", stream=False)).json()
    assert message["type"] == "message"
    assert [b["type"] for b in message["content"]] == ["text", "tool_use"]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"]["output_tokens"] == 20


def test_scripts_see_tool_results_and_errors_are_api_shaped(server: AnthropicServer) -> None:
    """A custom script sees tool results; ApiError answers with the API's error JSON."""
    seen: list[ApiRequest] = []

    def script(req: ApiRequest) -> Reply:
        seen.append(req)
        return [text("done")] if req.tool_results else [bash("env")]

    server.script = script
    followup = body("x", stream=False)
    followup["messages"].append(
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]}
    )
    with httpx.Client(base_url=server.url, timeout=10) as client:
        first = client.post("/v1/messages", json=body("x", stream=False)).json()
        assert first["content"][0]["input"]["command"] == "env"
        assert client.post("/v1/messages", json=followup).json()["content"][0]["text"] == "done"
        server.script = always(ApiError(401))
        failed = client.post("/v1/messages", json=body("x", stream=True))
    assert failed.status_code == 401
    assert failed.json()["error"]["type"] == "authentication_error"
    assert seen[1].tool_results[0]["content"] == "ok"
