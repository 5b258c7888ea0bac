"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.anthropic_server import AnthropicServer, hello_script
from tests.support.callback_receiver import CallbackReceiver
from tests.support.forgeline_server import (
    CALLBACK_SECRET,
    Running,
    running_forgeline,
    server_settings,
)


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Iterator[AnthropicServer]:
    """The scripted model (the hello.txt conversation unless a test sets ``script``);
    forgeline's own environment points the CLI at it, as an operator's
    ``ANTHROPIC_BASE_URL`` gateway would."""
    with AnthropicServer(hello_script) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
        yield server


@pytest.fixture
async def forgeline(
    tmp_path: Path, claude_bin: Path, model: AnthropicServer
) -> AsyncIterator[Running]:
    """forgeline serving on embedded SQLite with two in-process workers, its builds' agent
    talking to the scripted model."""
    async with running_forgeline(server_settings(tmp_path / "data", claude_bin)) as running:
        yield running


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    """A webhook receiver on 127.0.0.1 that checks signatures with the test servers' key."""
    with CallbackReceiver(CALLBACK_SECRET) as recv:
        yield recv
