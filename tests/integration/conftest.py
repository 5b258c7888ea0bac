"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.anthropic_server import AnthropicServer, hello_script


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Iterator[AnthropicServer]:
    """The scripted model (the hello.txt conversation unless a test sets ``script``);
    forgeline's own environment points the CLI at it, as an operator's
    ``ANTHROPIC_BASE_URL`` gateway would."""
    with AnthropicServer(hello_script) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
        yield server
