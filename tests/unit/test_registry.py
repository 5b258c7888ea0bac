"""The provider registry: default, errors, thread safety."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import pytest

from forgeline.domain import AgentCapabilities, AgentEvent, AgentRequest
from forgeline.domain.errors import DuplicateProviderError, UnknownProviderError
from forgeline.ports.agent import CodeAgent
from forgeline.services.registry import ProviderRegistry


class NamedAgent:
    """The smallest CodeAgent: only its name matters to the registry."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def execute(self, request: AgentRequest) -> AsyncGenerator[AgentEvent, None]:
        raise NotImplementedError

    async def cancel(self, run_id: str) -> None:
        return None

    async def capabilities(self) -> AgentCapabilities:
        return AgentCapabilities(provider=self._name, available=True)

    async def aclose(self) -> None:
        return None


def test_first_registered_is_default() -> None:
    """The first provider registered is the default, whatever comes later."""
    reg = ProviderRegistry()
    reg.register(NamedAgent("claude-code"))
    reg.register(NamedAgent("opencode"))
    assert reg.default_name == "claude-code"
    assert reg.get().name == "claude-code"
    assert reg.get(None).name == "claude-code"
    assert reg.get("opencode").name == "opencode"
    assert reg.names() == ["claude-code", "opencode"]


def test_unknown_name_lists_known_ones() -> None:
    """Looking up an unknown provider names every registered one."""
    reg = ProviderRegistry()
    reg.register(NamedAgent("claude-code"))
    reg.register(NamedAgent("opencode"))
    with pytest.raises(UnknownProviderError) as info:
        reg.get("codex")
    assert "codex" in str(info.value)
    assert "claude-code, opencode" in str(info.value)
    assert info.value.known == ("claude-code", "opencode")


def test_empty_registry_has_no_default() -> None:
    """An empty registry says so instead of returning nothing."""
    reg = ProviderRegistry()
    assert reg.default_name is None
    with pytest.raises(UnknownProviderError, match="none registered"):
        reg.get()


def test_duplicate_name_is_refused() -> None:
    """Registering a name twice is an error and keeps the first."""
    reg = ProviderRegistry()
    first = NamedAgent("claude-code")
    reg.register(first)
    with pytest.raises(DuplicateProviderError):
        reg.register(NamedAgent("claude-code"))
    assert reg.get("claude-code") is first


def test_eight_threads_register_and_look_up() -> None:
    """8 threads registering and looking up at once lose and duplicate nothing."""
    reg = ProviderRegistry()
    per_thread = 200
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []
    duplicates = 0
    lock = threading.Lock()

    def work(t: int) -> None:
        nonlocal duplicates
        barrier.wait()
        try:
            for i in range(per_thread):
                name = f"p{t}-{i}"
                reg.register(NamedAgent(name))
                assert reg.get(name).name == name
                # Every thread also tries one shared name: exactly one may win.
                if i == 0:
                    try:
                        reg.register(NamedAgent("shared"))
                    except DuplicateProviderError:
                        with lock:
                            duplicates += 1
                reg.get()  # the default is always answerable
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert not errors
    names = reg.names()
    assert len(names) == 8 * per_thread + 1
    assert len(set(names)) == len(names)
    assert duplicates == 7
    for t in range(8):
        for i in range(per_thread):
            assert f"p{t}-{i}" in reg


async def test_a_factory_builds_its_agent_once_on_first_use() -> None:
    """A provider registered by factory is built when first asked for, once, and only
    built providers are closed; names and the default need no build."""
    built: list[str] = []

    def factory(name: str) -> Callable[[], CodeAgent]:
        def build() -> CodeAgent:
            built.append(name)
            return NamedAgent(name)

        return build

    reg = ProviderRegistry()
    reg.register_factory("claude-code", factory("claude-code"))
    reg.register_factory("opencode", factory("opencode"))
    with pytest.raises(DuplicateProviderError):
        reg.register(NamedAgent("opencode"))
    assert (reg.names(), reg.default_name, "opencode" in reg, built) == (
        ["claude-code", "opencode"],
        "claude-code",
        True,
        [],
    )
    agent = reg.get()
    assert reg.get("claude-code") is agent
    assert built == ["claude-code"]
    await reg.aclose()
    assert [a.name for a in reg.agents()] == ["claude-code", "opencode"]
    assert built == ["claude-code", "opencode"]


def test_running_claude_code_loads_no_other_adapter(tmp_path: Path) -> None:
    """``forgeline agent run``'s path (the agent group, the registry, Claude Code's
    adapter) imports neither the OpenCode adapter nor httpx, nor the other commands."""
    script = """
import sys
from forgeline.entrypoints.cli.agent_run import agent_app
from forgeline.bootstrap import build_registry
from forgeline.settings import Settings
registry = build_registry(Settings())
assert registry.get("claude-code").name == "claude-code"
loaded = [m for m in ("httpx", "forgeline.adapters.agents.opencode",
                      "forgeline.entrypoints.cli.main", "forgeline.entrypoints.cli.client")
          if m in sys.modules]
print(",".join(loaded))
"""
    env = {**os.environ, "FORGELINE_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
