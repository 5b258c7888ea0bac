"""Master keys: format, key file creation and permissions, envelope encryption rules."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest

from forgeline.adapters.credentials.crypto import SealedValue, associated_data, seal, unseal
from forgeline.adapters.credentials.keys import (
    KeyRing,
    MasterKey,
    create_key_file,
    load_keyring,
    parse_key,
    parse_key_list,
    read_key_file,
)
from forgeline.domain.errors import ConfigurationError, CredentialError

RAW = bytes(range(32))


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(RAW).decode(),
        base64.urlsafe_b64encode(RAW).decode(),
        base64.urlsafe_b64encode(RAW).decode().rstrip("="),
        "  " + base64.b64encode(RAW).decode() + "\n",
    ],
)
def test_key_formats(text: str) -> None:
    """Standard or URL-safe base64, padded or not, surrounding blanks ignored."""
    assert parse_key(text, origin="FORGELINE_MASTER_KEY").material == RAW


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (base64.b64encode(bytes(16)).decode(), "decodes to 16 bytes"),
        (base64.b64encode(bytes(33)).decode(), "decodes to 33 bytes"),
        ("not base64 at all!", "not valid base64"),
        ("AAAA+AAA-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "not valid base64"),
    ],
)
def test_bad_keys_are_refused_without_quoting_them(text: str, reason: str) -> None:
    """A key of the wrong size or alphabet is refused; the message never quotes it."""
    with pytest.raises(ConfigurationError, match=reason) as info:
        parse_key(text, origin="FORGELINE_MASTER_KEY")
    assert text not in info.value.message
    assert "FORGELINE_MASTER_KEY" in info.value.message


def test_key_ids_are_stable_and_material_hidden() -> None:
    """The id derives from the key (same key, same id); repr never shows the material."""
    one, again, other = MasterKey.from_bytes(RAW), MasterKey.from_bytes(RAW), MasterKey.generate()
    assert one.id == again.id != other.id
    assert len(one.id) == 16
    assert one.encoded() not in repr(one)
    assert RAW.hex() not in repr(one)


def test_key_list_current_first_and_deduplicated() -> None:
    """A comma list gives the current key first; duplicates collapse."""
    a, b = MasterKey.generate(), MasterKey.generate()
    keys = parse_key_list(f"{a.encoded()}, {b.encoded()},{a.encoded()}", origin="env")
    assert [k.id for k in keys] == [a.id, b.id]
    with pytest.raises(ConfigurationError, match="no master key"):
        parse_key_list(" , ", origin="env")


def test_key_file_is_created_private_once(tmp_path: Path) -> None:
    """First run creates master.key with mode 0600; later loads read the same key."""
    data_dir = tmp_path / "data"
    first = load_keyring(None, data_dir)
    path = data_dir / "master.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert first.key_file == path
    assert load_keyring(None, data_dir).current == first.current
    assert not list(data_dir.glob(".*.tmp"))


def test_concurrent_first_runs_agree_on_one_key(tmp_path: Path) -> None:
    """Several processes creating the key file at once end with exactly one key, shared."""
    path = tmp_path / "master.key"
    created: list[bool] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        created.append(create_key_file(path))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert created.count(True) == 1
    assert len(read_key_file(path)) == 1


def test_readable_key_file_is_refused(tmp_path: Path) -> None:
    """A key file others can read is refused, with the chmod that fixes it."""
    load_keyring(None, tmp_path)
    path = tmp_path / "master.key"
    path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_keyring(None, tmp_path)


def test_environment_key_wins_over_file(tmp_path: Path) -> None:
    """FORGELINE_MASTER_KEY is used when set, and then no key file is created."""
    key = MasterKey.generate()
    keyring = load_keyring(key.encoded(), tmp_path)
    assert keyring.current == key
    assert keyring.key_file is None
    assert not (tmp_path / "master.key").exists()


def test_envelope_layout_and_binding() -> None:
    """Each layer is nonce ‖ ciphertext ‖ tag with fresh nonces; name and scope are bound."""
    key = MasterKey.generate()
    keyring = KeyRing([key], source="test")
    one = seal(key, "tok", None, "hello-secret")
    two = seal(key, "tok", None, "hello-secret")
    assert one.key_id == key.id
    assert len(one.wrapped_key) == 12 + 32 + 16
    assert len(one.ciphertext) == 12 + len("hello-secret") + 16
    assert one.ciphertext[:12] != two.ciphertext[:12]
    assert one.wrapped_key[:12] != two.wrapped_key[:12]
    assert unseal(keyring, "tok", None, one) == "hello-secret"
    for name, project in [("tok2", None), ("tok", "myapp")]:
        with pytest.raises(CredentialError):
            unseal(keyring, name, project, one)
    assert associated_data("a", "b") != associated_data("a", None)
    truncated = SealedValue(one.key_id, one.wrapped_key, one.ciphertext[:10])
    with pytest.raises(CredentialError):
        unseal(keyring, "tok", None, truncated)


def test_unknown_key_id_is_a_clear_error() -> None:
    """A ciphertext under a key this process lacks names both key ids and the source."""
    sealed = seal(MasterKey.generate(), "tok", None, "hello-secret")
    keyring = KeyRing([MasterKey.generate()], source="FORGELINE_MASTER_KEY")
    with pytest.raises(CredentialError, match=sealed.key_id) as info:
        unseal(keyring, "tok", None, sealed)
    assert keyring.current.id in info.value.message
    assert "FORGELINE_MASTER_KEY" in info.value.message
