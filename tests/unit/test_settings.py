"""Settings come from FORGELINE_* variables (and an optional TOML file), with DESIGN.md defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgeline.settings import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("FORGELINE_"):
            monkeypatch.delenv(key)


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no environment, the embedded defaults of DESIGN.md apply."""
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.data_dir == tmp_path / ".forgeline"
    assert s.database_url == f"sqlite:///{tmp_path / '.forgeline' / 'forgeline.db'}"
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert (s.claude_bin, s.opencode_bin) == ("claude", "opencode")
    assert s.lease_seconds == 30
    assert s.workspace == "local"
    assert s.git_base_url == str(tmp_path / ".forgeline" / "git")
    assert s.woodpecker_url is None
    assert s.opencode_config is None
    assert s.master_key is None
    assert s.callback_secret is None
    assert s.callback_allowed_hosts == []
    assert not s.uses_postgres


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every FORGELINE_ variable is read, lists from comma lists, secrets kept secret."""
    monkeypatch.setenv("FORGELINE_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("FORGELINE_DATABASE_URL", "postgresql://u@127.0.0.1:5432/db")
    monkeypatch.setenv("FORGELINE_PORT", "9123")
    monkeypatch.setenv("FORGELINE_LEASE_SECONDS", "7.5")
    monkeypatch.setenv("FORGELINE_WORKSPACE", "kubernetes")
    monkeypatch.setenv("FORGELINE_CALLBACK_ALLOWED_HOSTS", "127.0.0.1, 10.0.0.0/8")
    monkeypatch.setenv("FORGELINE_MASTER_KEY", "k" * 44)
    monkeypatch.setenv("FORGELINE_WOODPECKER_URL", "http://127.0.0.1:9000")
    s = Settings()
    assert s.data_dir == tmp_path / "d"
    assert s.uses_postgres
    assert s.port == 9123
    assert s.lease_seconds == 7.5
    assert s.workspace == "kubernetes"
    assert s.callback_allowed_hosts == ["127.0.0.1", "10.0.0.0/8"]
    assert s.master_key is not None
    assert s.master_key.get_secret_value() == "k" * 44
    assert "kkkk" not in repr(s)
    assert s.woodpecker_url == "http://127.0.0.1:9000"


def test_invalid_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value of the wrong type names the setting."""
    monkeypatch.setenv("FORGELINE_PORT", "eighty")
    with pytest.raises(ValueError, match="port"):
        Settings()


def test_toml_file_mirrors_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A settings file gives values; the environment still wins."""
    cfg = tmp_path / "forgeline.toml"
    cfg.write_text('port = 9001\nhost = "127.0.0.2"\n')
    monkeypatch.setenv("FORGELINE_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("FORGELINE_PORT", "9002")
    s = Settings()
    assert s.host == "127.0.0.2"
    assert s.port == 9002


def test_acp_agents_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """FORGELINE_ACP_AGENTS names ACP agents by argv, or by command and variables to pass."""
    monkeypatch.setenv(
        "FORGELINE_ACP_AGENTS",
        '{"gemini-acp": ["gemini", "--acp"],'
        ' "oc": {"command": ["opencode", "acp"], "env": ["OPENCODE_CONFIG_CONTENT"]}}',
    )
    agents = Settings().acp_agents
    assert agents["gemini-acp"].command == ("gemini", "--acp")
    assert agents["gemini-acp"].env == ()
    assert agents["oc"].env == ("OPENCODE_CONFIG_CONTENT",)
    assert Settings().acp_permission_mode == "bypassPermissions"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ('{"Gemini": ["gemini"]}', "must be lowercase"),
        ('{"opencode": ["opencode", "acp"]}', "built-in provider"),
        ('{"g": []}', "non-empty list"),
        ('{"g": {"command": ["x"], "env": ["NOT A NAME"]}}', "not an environment variable"),
        ('{"g": {"command": ["x"], "shell": true}}', "Extra inputs"),
        ('["gemini"]', "valid dictionary"),
        ("{not json", "acp_agents"),
    ],
)
def test_bad_acp_agents_are_clear_errors(
    monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    """A bad FORGELINE_ACP_AGENTS stops start-up naming the setting and what is wrong."""
    monkeypatch.setenv("FORGELINE_ACP_AGENTS", value)
    with pytest.raises(ValueError, match="acp_agents") as caught:
        Settings()
    assert says in str(caught.value)
