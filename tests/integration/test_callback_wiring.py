"""The composition root builds a working callback dispatcher from settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forgeline.bootstrap import build_callback_dispatcher, open_container
from forgeline.domain.callbacks import BUILD_COMPLETED, DeliveryStatus, build_payload
from forgeline.domain.errors import ConfigurationError
from forgeline.services.callbacks import CALLBACK_KEY_FILE
from forgeline.settings import Settings
from tests.support.callback_receiver import CallbackReceiver


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FORGELINE_"):
            monkeypatch.delenv(key)


async def test_settings_to_delivered_callback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Env settings → generated key file, redacted key, a dispatcher that delivers signed."""
    monkeypatch.setenv("FORGELINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FORGELINE_CALLBACK_ALLOWED_HOSTS", "127.0.0.1, 10.0.0.0/8")
    monkeypatch.setenv("FORGELINE_CALLBACK_RETRY_PERIOD_S", "30")
    settings = Settings()
    async with open_container(settings) as container:
        dispatcher = build_callback_dispatcher(settings, container.database, container.redactor)
        key = (settings.data_dir / CALLBACK_KEY_FILE).read_text().strip()
        assert container.redactor.redact(f"key={key}") == "key=[REDACTED:callback-secret]"
        assert dispatcher.config.retry_period_s == 30
        with CallbackReceiver(key) as receiver:
            async with dispatcher:
                payload = build_payload(
                    task_id="t-1", project_id="p", status="completed", output="ok"
                )
                delivery = await dispatcher.enqueue("t-1", receiver.url(), BUILD_COMPLETED, payload)
                (got,) = await receiver.wait_for(1)
        assert got.signature_valid
        stored = await dispatcher.outbox.get(delivery.id)
        # The attempt is recorded right after the answer; stop() waited for it.
        assert stored.status is DeliveryStatus.DELIVERED


async def test_configured_secret_and_bad_allow_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FORGELINE_CALLBACK_SECRET is used as is; a malformed allow list is a ConfigurationError."""
    monkeypatch.setenv("FORGELINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FORGELINE_CALLBACK_SECRET", "configured-secret-value")
    settings = Settings()
    async with open_container(settings) as container:
        build_callback_dispatcher(settings, container.database, container.redactor)
        assert not (settings.data_dir / CALLBACK_KEY_FILE).exists()
        assert "configured-secret-value" not in container.redactor.redact("configured-secret-value")
        bad = settings.model_copy(update={"callback_allowed_hosts": ["not a host!"]})
        with pytest.raises(ConfigurationError, match="ALLOWED_HOSTS"):
            build_callback_dispatcher(bad, container.database, container.redactor)
