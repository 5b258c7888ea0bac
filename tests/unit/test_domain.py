"""Domain rules: request validation, event shapes, project names."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from forgeline.domain import (
    MAX_TIMEOUT_S,
    AgentEvent,
    AgentRequest,
    AgentResult,
    BuildSpec,
    RunStatus,
    StatusData,
    ToolUseData,
    Usage,
    validate_project_name,
)
from forgeline.domain.agent import cut_output, event_from_dict
from forgeline.domain.errors import (
    ForgelineError,
    InvalidProjectNameError,
    InvalidTimeoutError,
    PromptRequiredError,
    ValidationError,
)
from forgeline.domain.secrets import Secret


@pytest.mark.parametrize("prompt", ["", " ", "\n\t  "])
def test_blank_prompt_is_rejected(prompt: str) -> None:
    """An empty or whitespace-only prompt raises PromptRequiredError."""
    with pytest.raises(PromptRequiredError):
        AgentRequest(prompt=prompt, workdir="/tmp/x").validate()


@pytest.mark.parametrize("timeout", [0, -1, -0.5, math.inf, -math.inf, math.nan, MAX_TIMEOUT_S + 1])
def test_bad_timeouts_are_rejected(timeout: float) -> None:
    """Zero, negative, non-finite and absurdly long timeouts raise InvalidTimeoutError."""
    with pytest.raises(InvalidTimeoutError) as info:
        AgentRequest(prompt="hi", workdir="/tmp/x", timeout_s=timeout).validate()
    assert info.value.field == "timeout_s"
    assert isinstance(info.value, ValidationError)
    assert isinstance(info.value, ForgelineError)


def test_bad_idle_timeout_is_rejected() -> None:
    """The idle timeout follows the same rule as the wall-clock one."""
    with pytest.raises(InvalidTimeoutError) as info:
        AgentRequest(prompt="hi", workdir="/tmp/x", idle_timeout_s=0).validate()
    assert info.value.field == "idle_timeout_s"


def test_valid_request_passes() -> None:
    """A sensible request validates and returns itself."""
    req = AgentRequest(prompt="do it", workdir="/tmp/x", timeout_s=MAX_TIMEOUT_S, idle_timeout_s=5)
    assert req.validate() is req


def test_build_spec_validation() -> None:
    """A build spec with a blank prompt or a bad timeout is refused."""
    with pytest.raises(PromptRequiredError):
        BuildSpec(prompt="  ").validate()
    with pytest.raises(InvalidTimeoutError):
        BuildSpec(prompt="x", timeout_s=0).validate()
    spec = BuildSpec(prompt="x", variables={"a": 1}, callback_url="https://x.example/cb")
    assert BuildSpec.from_payload(spec.to_payload()) == spec


def test_event_json_shape_round_trips() -> None:
    """Events serialize to DESIGN.md's shape and back."""
    when = datetime(2026, 11, 24, 7, 8, 52, 328000, tzinfo=UTC)
    event = AgentEvent(
        data=ToolUseData(id="t1", name="Write", input={"file_path": "/x"}),
        provider="claude-code",
        session_id="s1",
        time=when,
    ).numbered(7, "task-1")
    d = event.to_dict()
    assert d == {
        "seq": 7,
        "task_id": "task-1",
        "provider": "claude-code",
        "session_id": "s1",
        "type": "tool_use",
        "time": "2026-11-24T07:08:52.328Z",
        "data": {"id": "t1", "name": "Write", "input": {"file_path": "/x"}},
    }
    assert event_from_dict(d) == event
    result = AgentEvent(
        data=AgentResult(status=RunStatus.TIMED_OUT, usage=Usage(input_tokens=3)),
        provider="opencode",
        time=when,
    )
    assert result.is_result
    assert event_from_dict(result.to_dict()) == result
    status = AgentEvent(data=StatusData(state="retrying", attempt=2), provider="p", time=when)
    assert status.to_dict()["data"] == {"state": "retrying", "attempt": 2}
    assert event_from_dict(status.to_dict()) == status


def test_cut_output_says_what_was_cut() -> None:
    """Long tool output is cut with a marker; short output is untouched."""
    assert cut_output("abc", 5) == "abc"
    assert cut_output("x" * 10, 4) == "xxxx\n… [6 more characters cut]"


@pytest.mark.parametrize("name", ["myapp", "a", "my-app-2", "0abc"])
def test_good_project_names(name: str) -> None:
    """Lowercase letters, digits and inner hyphens are accepted."""
    assert validate_project_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "MyApp", "my_app", "../etc", "a/b", "-a", "a-", "a.b", "x" * 64]
)
def test_bad_project_names(name: str) -> None:
    """Uppercase, path tricks, edge hyphens and over-long names are refused."""
    with pytest.raises(InvalidProjectNameError):
        validate_project_name(name)


def test_secret_never_prints_its_value() -> None:
    """repr, str and format of a Secret show a mask."""
    secret = Secret("hunter2-very-secret", name="db")
    shown = f"{secret} {secret!r} {secret!s} {secret:>30}"
    assert "hunter2" not in shown
    assert "[REDACTED:db]" in shown
    assert secret.reveal() == "hunter2-very-secret"
