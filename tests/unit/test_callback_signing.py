"""Callback signatures, canonical bodies, backoff and the signing key file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from forgeline.domain.backoff import Backoff
from forgeline.domain.build import Artifacts
from forgeline.domain.callbacks import (
    build_payload,
    canonical_body,
    sign,
    sign_webhook,
    verify,
    verify_webhook,
)
from forgeline.domain.errors import ConfigurationError
from forgeline.domain.secrets import Secret
from forgeline.services.callbacks import (
    CALLBACK_KEY_FILE,
    DispatcherConfig,
    ensure_callback_secret,
)


def test_signature_is_hmac_sha256_of_the_raw_body() -> None:
    """``sign`` gives ``sha256=<hex>`` of the body, as any receiver can recompute it."""
    body = canonical_body({"b": 1, "a": "é"})
    assert body == b'{"a":"\\u00e9","b":1}'
    expected = hmac.new(b"key-123456", body, hashlib.sha256).hexdigest()
    assert sign(body, "key-123456") == f"sha256={expected}"
    assert sign(body, Secret("key-123456")) == sign(body, b"key-123456")


def test_verify_accepts_only_the_exact_signature() -> None:
    """``verify`` fails on another body, key, prefix, or a missing header."""
    body = b'{"a":1}'
    signature = sign(body, "k" * 16)
    assert verify(body, "k" * 16, signature)
    assert not verify(body + b" ", "k" * 16, signature)
    assert not verify(body, "j" * 16, signature)
    assert not verify(body, "k" * 16, signature.removeprefix("sha256="))
    assert not verify(body, "k" * 16, "sha1=" + signature[7:])
    assert not verify(body, "k" * 16, None)
    assert not verify(body, "k" * 16, "")


def test_webhook_signature_covers_id_timestamp_and_body() -> None:
    """``webhook-signature`` is ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``; it
    verifies within the tolerance only, and any one of several signatures may match."""
    body, key = b'{"a":1}', "k" * 16
    content = b"d1.1700000000." + body
    digest = hmac.new(key.encode(), content, hashlib.sha256).digest()
    signature = sign_webhook("d1", 1_700_000_000, body, key)
    assert signature == "v1," + base64.b64encode(digest).decode()
    headers = {
        "webhook-id": "d1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": f"v1,bm9wZQ== {signature}",
    }
    assert verify_webhook(body, key, headers, now=1_700_000_100)
    assert not verify_webhook(body, key, headers, now=1_700_000_301)  # a replay, later
    assert not verify_webhook(body, key, headers, now=1_699_999_000)  # from the future
    assert not verify_webhook(body + b" ", key, headers, now=1_700_000_000)
    assert not verify_webhook(body, key, {**headers, "webhook-id": "d2"}, now=1_700_000_000)
    assert not verify_webhook(body, "j" * 16, headers, now=1_700_000_000)
    assert not verify_webhook(body, key, {**headers, "webhook-timestamp": "\u0661\u0667"}, now=0)


def test_the_receiver_in_the_docs_verifies_and_refuses_replays() -> None:
    """The verifying receiver docs/callbacks.md shows accepts a fresh delivery, and refuses
    an old timestamp, another body and another key."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "callbacks.md").read_text()
    section = doc.split("## Verifying a request", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    scope: dict[str, Any] = {}
    exec(compile(code.group(1), "docs/callbacks.md", "exec"), scope)  # noqa: S102 - our docs
    verify_doc = scope["verify"]
    body, key, now = canonical_body({"task_id": "t"}), "callback-secret-1234", int(time.time())

    def headers(stamp: int) -> dict[str, str]:
        signature = sign_webhook("d1", stamp, body, key)
        return {"webhook-id": "d1", "webhook-timestamp": str(stamp), "webhook-signature": signature}

    assert verify_doc(body, key, headers(now))
    assert not verify_doc(body, key, headers(now - 3600))
    assert not verify_doc(body + b" ", key, headers(now))
    assert not verify_doc(body, "another-secret-5678", headers(now))


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    """The delay is draw x min(cap, base·2^(n-1)); huge attempt numbers do not overflow."""
    FULL_JITTER = Backoff(base_s=2, max_s=600, jitter="full")  # noqa: N806 - the policy under test
    assert FULL_JITTER.delay(1, draw=0.5) == 1.0
    assert FULL_JITTER.delay(4, draw=1.0) == 16.0
    assert FULL_JITTER.delay(20, draw=0.25) == 150.0
    assert FULL_JITTER.delay(10_000, draw=0.999) < 600
    assert FULL_JITTER.delay(3, draw=0.0) == 0.0


def test_secret_file_is_generated_once_private_and_stable(tmp_path: Path) -> None:
    """Without a configured key a 0600 key file is created once and then reused."""
    first = ensure_callback_secret(tmp_path / "data")
    path = tmp_path / "data" / CALLBACK_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.reveal()) == 64
    assert ensure_callback_secret(tmp_path / "data") == first
    assert "[REDACTED" in repr(first)
    assert list((tmp_path / "data").iterdir()) == [path]


def test_configured_secret_wins(tmp_path: Path) -> None:
    """FORGELINE_CALLBACK_SECRET is used as is and no file is written."""
    assert ensure_callback_secret(tmp_path, "configured-key").reveal() == "configured-key"
    assert not (tmp_path / CALLBACK_KEY_FILE).exists()


def test_empty_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    """A key file emptied by hand is reported, not silently used as an empty key."""
    (tmp_path / CALLBACK_KEY_FILE).write_text("\n")
    with pytest.raises(ConfigurationError, match="empty"):
        ensure_callback_secret(tmp_path)


def test_dispatcher_config_is_checked() -> None:
    """A lease shorter than the request timeout would allow double sends: refused."""
    with pytest.raises(ConfigurationError, match="lease_s"):
        DispatcherConfig(request_timeout_s=30, lease_s=10)
    with pytest.raises(ConfigurationError):
        DispatcherConfig(concurrency=0)


def test_build_payload_has_the_documented_shape() -> None:
    """The payload is DESIGN.md's: task, project, status, result.output and artifacts."""
    payload = build_payload(
        task_id="t-1",
        project_id="myapp",
        status="completed",
        output="done",
        artifacts=Artifacts(commit_sha="abc123", deploy_url="https://myapp.example", pipeline=42),
    )
    assert payload == {
        "task_id": "t-1",
        "project_id": "myapp",
        "status": "completed",
        "result": {
            "output": "done",
            "artifacts": {
                "commit_sha": "abc123",
                "deploy_url": "https://myapp.example",
                "pipeline": 42,
            },
        },
    }
