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
from forgeline.domain.inputs import (
    LINE,
    TEXT,
    TEXT_CRLF,
    TOO_DEEP,
    check_json,
    check_text,
    map_json,
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


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"prompt": "AAA\x00BBB"}, "prompt"),
        ({"prompt": "ring \x07"}, "prompt"),
        ({"resume_session": "abc\x00"}, "resume_session"),
        ({"resume_session": "abc\ndef"}, "resume_session"),
        ({"model": "sonnet\x1b"}, "model"),
    ],
)
def test_request_refuses_control_characters(changes: dict[str, str], field: str) -> None:
    """What reaches an agent's command line holds no NUL (argv would cut it there) nor
    another control character; prompts may hold tab, newline and CR LF."""
    with pytest.raises(ValidationError) as caught:
        AgentRequest(**{"prompt": "x", "workdir": "/w", **changes}).validate()  # type: ignore[arg-type]
    assert caught.value.field == field
    AgentRequest(prompt="one\r\ntwo\tthree\n", workdir="/w").validate()


@pytest.mark.parametrize(
    ("allow", "good", "bad"),
    [
        (LINE, "plain name-1.2", "a tab\t"),
        (TEXT, "two\nlines\tand a tab", "cr\r"),
        (TEXT_CRLF, "crlf\r\nline", "nul\x00"),
        (TEXT_CRLF, "unicode ü ✓ \u2028", "c1 \x85"),
        (TEXT_CRLF, "fine", "lone surrogate \ud800"),
        (TEXT_CRLF, "fine", "del \x7f"),
    ],
)
def test_check_text(allow: str, good: str, bad: str) -> None:
    """Only the allowed control characters pass; the error names the field, the code
    point and where it is."""
    assert check_text(good, field="f", allow=allow) == good
    with pytest.raises(ValidationError, match=r"^f: contains the character U\+") as caught:
        check_text(bad, field="f", allow=allow)
    assert f"offset {len(bad) - 1}" in caught.value.message


def test_check_json_bounds_depth_size_and_content() -> None:
    """Plain JSON within the bounds passes; deeper, larger, non-finite, non-JSON values
    and control characters (in keys too) are refused, naming where."""
    ok = {"a": [1, 2.5, True, None, {"b": "two\nlines"}]}
    assert check_json(ok, field="v") is ok
    deep: dict[str, object] = {}
    for _ in range(100_000):  # far past any recursion limit
        deep = {"a": deep}
    with pytest.raises(ValidationError, match="v: nested deeper than 32 levels"):
        check_json(deep, field="v")
    with pytest.raises(ValidationError, match="limit is 10"):
        check_json({"a": "x" * 10}, field="v", max_chars=10)
    with pytest.raises(ValidationError, match=r"v\.a\[1\]: numbers must be finite"):
        check_json({"a": [1, math.nan]}, field="v")
    with pytest.raises(ValidationError, match=r"v\.a: contains the character U\+0000"):
        check_json({"a": "\x00"}, field="v")
    with pytest.raises(ValidationError, match=r"v \(a key\): contains the character U\+000A"):
        check_json({"a\nb": 1}, field="v")
    with pytest.raises(ValidationError, match="set is not a JSON value"):
        check_json({"a": {1}}, field="v")


def test_map_json_is_iterative_and_cuts_deep_values() -> None:
    """A copy with every string (keys too) mapped, however deep; containers deeper than
    ``max_depth`` become the TOO_DEEP marker; tuples become lists, order is kept."""
    deep: object = "leaf"
    for _ in range(100_000):
        deep = {"k": [deep]}
    copied = map_json(deep, text=str.upper)
    for _ in range(100_000):
        assert isinstance(copied, dict)
        copied = copied["K"][0]
    assert copied == "LEAF"
    assert map_json({"a": {"b": {"c": 1}}, "t": (1, "x")}, max_depth=2) == {
        "a": {"b": TOO_DEEP},
        "t": [1, "x"],
    }
    assert list(map_json({"z": 1, "a": 2, "m": 3})) == ["z", "a", "m"]
