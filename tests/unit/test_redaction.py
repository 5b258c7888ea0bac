"""The Redactor and event redaction: registered values never come out readable."""

from __future__ import annotations

import base64
import json
import logging
import threading
import urllib.parse
from collections.abc import Iterator

import pytest
import structlog

from forgeline.domain.agent import (
    AgentEvent,
    AgentResult,
    ErrorData,
    InitData,
    MessageData,
    RunStatus,
    StatusData,
    ToolResultData,
    ToolUseData,
    cut_output,
)
from forgeline.domain.secrets import Secret
from forgeline.logs import Redactor, configure_logging, encoded_forms
from forgeline.services.redaction import redact_event, redact_output, redact_payload

TOKEN = "ghp_S3cr3tT0kenValue0123456789"
KEY = "sk-ant-api03-AbCdEf_ghIJ+kl/mnOP=="


@pytest.fixture
def redactor() -> Redactor:
    """A redactor knowing two secrets."""
    r = Redactor()
    r.add(TOKEN, "git-token")
    r.add(KEY, "anthropic-key")
    return r


def test_plain_text(redactor: Redactor) -> None:
    """Every occurrence of every value is masked with its name."""
    text = f"push with {TOKEN}; key {KEY} and again {TOKEN}"
    assert redactor.redact(text) == (
        "push with [REDACTED:git-token]; key [REDACTED:anthropic-key] and again "
        "[REDACTED:git-token]"
    )
    assert redactor.redact("nothing here") == "nothing here"
    assert Redactor().redact(TOKEN) == TOKEN


def test_nested_json(redactor: Redactor) -> None:
    """Values inside nested dicts, lists and keys of a JSON-like object are masked."""
    obj = {
        "result": {"output": f"env: T={TOKEN}", "artifacts": [1, None, True, f"k={KEY}"]},
        f"weird-{TOKEN}": ("tuple", TOKEN),
        "n": 3.5,
    }
    out = redactor.redact_obj(obj)
    dumped = json.dumps(out)
    assert TOKEN not in dumped
    assert KEY not in dumped
    assert out["result"]["output"] == "env: T=[REDACTED:git-token]"
    assert out["result"]["artifacts"][:3] == [1, None, True]
    assert out["n"] == 3.5
    assert "weird-[REDACTED:git-token]" in out
    assert redact_payload(obj, redactor) == out


def test_overlapping_and_nested_secrets() -> None:
    """Secrets that overlap or contain one another are masked whole: no piece stays readable."""
    r = Redactor()
    r.add("abcdef123456", "first")
    r.add("123456uvwxyz", "second")
    r.add("cdef12", "inner")
    assert r.redact("<abcdef123456uvwxyz>") == "<[REDACTED:first][REDACTED:second]>"
    assert r.redact("xx123456uvwxyzxx") == "xx[REDACTED:second]xx"
    assert r.redact("abcdef123456") == "[REDACTED:first]"
    assert r.redact("abcdef12") == "ab[REDACTED:inner]"
    for text in ["abcdef123456uvwxyz", "zzabcdef123456uvwxyz", "abcdef123456abcdef123456"]:
        out = r.redact(text)
        for piece in ("abcdef", "123456", "uvwxyz"):
            assert piece not in out


def test_chained_overlaps_are_one_span() -> None:
    """A overlapping B overlapping C (C starting after A ends) is masked as one span."""
    r = Redactor()
    r.add_many([("111111222", "a"), ("222333333", "b"), ("333333444", "c")])
    assert r.redact("<111111222333333444>") == "<[REDACTED:a][REDACTED:b][REDACTED:c]>"
    assert r.redact("111111222 333333444") == "[REDACTED:a] [REDACTED:c]"


def test_short_values_are_ignored() -> None:
    """Values shorter than MIN_LENGTH are not masked (they would mangle every line)."""
    r = Redactor()
    r.add("abc", "tiny")
    assert r.redact("abc abc") == "abc abc"
    assert len(r) == 0


@pytest.mark.parametrize("prefix", [b"", b"u", b"us", b"user:", b"x-access-token:"])
def test_base64_at_every_alignment(redactor: Redactor, prefix: bytes) -> None:
    """base64 of a value, wherever it sits in the encoded stream (e.g. basic auth), is masked."""
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        blob = encode(prefix + TOKEN.encode() + b"\n").decode()
        assert "[REDACTED:git-token]" in redactor.redact(blob)


def test_url_and_json_encodings(redactor: Redactor) -> None:
    """Percent-encoded (URLs) and JSON-escaped forms are masked too."""
    url = f"https://x:{urllib.parse.quote(KEY, safe='')}@git.example/repo.git"
    assert KEY not in (out := redactor.redact(url))
    assert "[REDACTED:anthropic-key]" in out
    r = Redactor()
    r.add('pa"ss\\word-123', "quoted")
    assert r.redact(json.dumps({"v": 'pa"ss\\word-123'})) == '{"v": "[REDACTED:quoted]"}'


def test_multiline_values_are_masked_line_by_line() -> None:
    """Each line of a multi-line value (a PEM key) is masked even when printed alone."""
    pem = (
        "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n"
        "-----END KEY-----"
    )
    r = Redactor()
    r.add(pem, "deploy-key")
    assert r.redact(pem) == "[REDACTED:deploy-key]"
    assert "MIIEvQ" not in r.redact("line: MIIEvQIBADANBgkqhkiG9w0BAQEFAASC")
    assert set(encoded_forms(pem)) >= {pem, "BKcwggSjAgEAAoIBAQC7"}


def test_truncated_text_masks_a_dangling_prefix(redactor: Redactor) -> None:
    """A secret cut in half by a size limit has its first half masked."""
    assert redactor.redact_truncated(f"env T={TOKEN[:10]}") == "env T=[REDACTED:git-token]"
    assert redactor.redact_truncated("env T=ghp") == "env T=ghp"  # under MIN_TAIL
    cut = cut_output(f"{'x' * 95}{TOKEN}", limit=100)
    assert TOKEN[:5] not in redact_output(cut, redactor)
    assert redact_output(cut, redactor).endswith("more characters cut]")


def test_registration_is_thread_safe() -> None:
    """Adding values from many threads while redacting never loses one nor crashes."""
    r = Redactor()
    values = [f"secret-value-{i:04d}-xyz" for i in range(100)]

    def add(chunk: list[str]) -> None:
        for v in chunk:
            r.add(v, "n")
            r.redact(v)

    threads = [threading.Thread(target=add, args=(values[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    text = " ".join(values)
    assert not any(v in r.redact(text) for v in values)


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """Restore structlog and root logging after a test configures them."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.usefixtures("logging_restored")
@pytest.mark.parametrize("fmt", ["json", "console"])
def test_log_lines_through_structlog(
    redactor: Redactor, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """structlog and stdlib log lines (message, fields, exceptions) never show a value."""
    configure_logging("info", fmt, redactor)
    log = structlog.get_logger("test")
    log.info("pushing", url=f"https://x:{TOKEN}@host", env={"KEY": KEY}, args=[TOKEN])
    message = f"message with {KEY}"  # a value interpolated into the event text itself
    log.info(message)
    try:
        raise RuntimeError(f"failed with {TOKEN}")
    except RuntimeError:
        log.exception("boom")
    logging.getLogger("stdlib").warning("legacy %s", TOKEN)
    log.info("secret object", value=Secret(KEY, name="anthropic-key"))
    err = capsys.readouterr().err
    assert TOKEN not in err
    assert KEY not in err
    assert err.count("[REDACTED:git-token]") >= 4
    assert "[REDACTED:anthropic-key]" in err


# --- events --------------------------------------------------------------------------------


def _event(data: object, raw: dict[str, object] | None = None) -> AgentEvent:
    return AgentEvent(data=data, provider="claude-code", session_id="s-1", raw=raw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        MessageData(role="assistant", text=f"the token is {TOKEN}"),
        ToolUseData(id="t1", name="Bash", input={"command": f"curl -H 'x: {KEY}'", "n": [TOKEN]}),
        ToolResultData(id="t1", output=f"PATH=/bin\nGIT_TOKEN={TOKEN}\nK={KEY}\n"),
        ToolResultData(id="t1", output=cut_output(f"{'y' * 50}{TOKEN}", limit=60)),
        StatusData(state="retrying", attempt=2, detail={"reason": f"bad key {KEY}"}),
        ErrorData(kind="agent", message=f"exit 1: {TOKEN}"),
        AgentResult(status=RunStatus.SUCCEEDED, text=f"done, used {KEY}", num_turns=3),
        InitData(model="m", cwd=f"/work/{TOKEN}", tools=("Bash", f"x{TOKEN}")),
    ],
)
def test_redact_event_every_type(redactor: Redactor, data: object) -> None:
    """Every event type comes out with no value (or piece of one) and the right masks."""
    event = _event(data, raw={"provider": f"raw {TOKEN}"}).numbered(7, "task-1")
    out = redact_event(event, redactor)
    dumped = json.dumps(out.to_dict())
    assert TOKEN[:8] not in dumped
    assert KEY not in dumped
    assert "[REDACTED:" in dumped
    assert (out.seq, out.task_id, out.provider, out.session_id, out.type) == (
        7,
        "task-1",
        "claude-code",
        "s-1",
        event.type,
    )
    if isinstance(out.data, AgentResult):
        assert out.data.status is RunStatus.SUCCEEDED
        assert out.data.num_turns == 3


def test_redact_event_without_secrets_is_identity(redactor: Redactor) -> None:
    """An event with nothing to mask is returned as it is."""
    event = _event(MessageData(role="assistant", text="hello"))
    assert redact_event(event, redactor) is event


def test_deeply_nested_objects_are_redacted_without_recursion(redactor: Redactor) -> None:
    """A structure nested far past the recursion limit (an agent's tool input, data an older
    version stored) is redacted all the way down, keys included."""
    obj: object = {"token": TOKEN}
    for _ in range(50_000):
        obj = {f"k-{KEY}": [obj]}
    redacted = redactor.redact_obj(obj)
    for _ in range(50_000):
        assert isinstance(redacted, dict)
        [(key, value)] = redacted.items()
        assert key == "k-[REDACTED:anthropic-key]"
        redacted = value[0]
    assert redacted == {"token": "[REDACTED:git-token]"}
