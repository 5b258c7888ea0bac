"""Master keys: their format, where they come from, and the key ring that holds them.

Format
    A master key is 32 random bytes written as base64, standard (``+/``) or URL-safe
    (``-_``), padded or not: what ``openssl rand -base64 32`` or
    ``python -c "import os, base64; print(base64.b64encode(os.urandom(32)).decode())"``
    prints. Anything that does not decode to exactly 32 bytes is refused at start-up.

Sources (the first that is set wins)
    ``FORGELINE_MASTER_KEY``
        One key, or a comma-separated list during a rotation: the first is the
        *current* key (new ciphertexts use it), the others are only read. The operator
        owns the variable, so forgeline never changes it: rotating means putting the new
        key in front, running ``forgeline credential rotate-key``, then removing the old.
    ``<data dir>/master.key``
        Created on first run, owner-only (0600) and atomically (two processes starting at
        once end up with the same key). One base64 key per line, current first; ``#``
        starts a comment. ``rotate-key`` rewrites it: current key plus the previous ones
        while re-encrypting, then only the new key.

Key ids
    Every ciphertext records the id of the key that sealed it. The id is derived from the
    key (an HMAC of a fixed label, 16 hex digits), so every process holding a key agrees on
    its id without any registry, and the id reveals nothing about the key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from forgeline.domain.errors import ConfigurationError, CredentialError

#: Bytes in an AES-256 key.
KEY_BYTES: Final = 32
#: The key file's name inside the data directory.
KEY_FILE_NAME: Final = "master.key"
_ID_LABEL: Final = b"forgeline master key id v1"
_FILE_HEADER: Final = (
    "# forgeline master keys: base64 of 32 random bytes, one per line, current first.\n"
    "# Keep this file secret and backed up: without it stored credentials cannot be read.\n"
)


@dataclass(frozen=True, slots=True)
class MasterKey:
    """One AES-256 key and its id; ``repr`` never shows the material."""

    id: str
    material: bytes = field(repr=False)

    @classmethod
    def from_bytes(cls, material: bytes) -> MasterKey:
        """Wrap raw key bytes (exactly :data:`KEY_BYTES`)."""
        if len(material) != KEY_BYTES:
            raise ConfigurationError(f"a master key must be {KEY_BYTES} bytes, got {len(material)}")
        key_id = hmac.new(material, _ID_LABEL, hashlib.sha256).hexdigest()[:16]
        return cls(id=key_id, material=material)

    @classmethod
    def generate(cls) -> MasterKey:
        """A fresh random key from the operating system's CSPRNG."""
        return cls.from_bytes(secrets.token_bytes(KEY_BYTES))

    def encoded(self) -> str:
        """The key as standard padded base64 (the format of the key file)."""
        return base64.b64encode(self.material).decode("ascii")


def parse_key(text: str, *, origin: str) -> MasterKey:
    """Decode one base64 (standard or URL-safe, padding optional) key.

    ``origin`` names where the text came from for the error message; the text itself is
    never quoted, since it is (or is close to) a secret.
    """
    cleaned = "".join(text.split())
    cleaned += "=" * (-len(cleaned) % 4)
    url_safe = any(c in cleaned for c in "-_")
    try:
        if url_safe and any(c in cleaned for c in "+/"):
            raise ValueError("mixes the standard and URL-safe alphabets")
        raw = base64.b64decode(cleaned, altchars=b"-_" if url_safe else None, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigurationError(
            f"{origin}: a master key must be base64 of {KEY_BYTES} random bytes "
            "(e.g. the output of `openssl rand -base64 32`); this one is not valid base64"
        ) from exc
    if len(raw) != KEY_BYTES:
        raise ConfigurationError(
            f"{origin}: a master key must be base64 of exactly {KEY_BYTES} bytes "
            f"(e.g. `openssl rand -base64 32`); this one decodes to {len(raw)} bytes"
        )
    return MasterKey.from_bytes(raw)


def parse_key_list(text: str, *, origin: str) -> list[MasterKey]:
    """Keys separated by commas or newlines (``#`` comments allowed), current first."""
    keys: list[MasterKey] = []
    for line in text.splitlines():
        for part in line.split("#", 1)[0].split(","):
            if part.strip():
                keys.append(parse_key(part, origin=f"{origin} (key {len(keys) + 1})"))
    if not keys:
        raise ConfigurationError(f"{origin}: no master key found")
    seen: dict[str, MasterKey] = {}
    for key in keys:
        seen.setdefault(key.id, key)
    return list(seen.values())


# --- the key file ---------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory entry is; without this a crash right
    # after a rotation could bring back the old file while the database holds new ciphertexts.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a new owner-only file (fails if ``path`` exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _key_file_text(keys: Sequence[MasterKey]) -> str:
    return _FILE_HEADER + "".join(f"{key.encoded()}\n" for key in keys)


def write_key_file(path: Path, keys: Sequence[MasterKey]) -> None:
    """Atomically replace the key file with ``keys`` (current first), owner-only."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        _write_private(tmp, _key_file_text(keys))
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigurationError(f"cannot write the master key file {path}: {exc}") from exc
    _fsync_dir(path.parent)


def create_key_file(path: Path) -> bool:
    """Create the key file with a fresh key unless it exists; True when this call created it.

    The key is written to a private temporary file first and then *linked* to its final
    name: ``link`` fails when the name exists, so two processes starting at once cannot
    both create a key (the loser reads the winner's), and no reader ever sees a half-written
    file.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        _write_private(tmp, _key_file_text([MasterKey.generate()]))
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        _fsync_dir(path.parent)
        return True
    except OSError as exc:
        raise ConfigurationError(f"cannot create the master key file {path}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def read_key_file(path: Path) -> list[MasterKey]:
    """The keys of the key file, current first; refuses a file others can read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the master key file {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Like ssh with private keys: a key others can read is a key that may have leaked.
        raise ConfigurationError(
            f"the master key file {path} is accessible by other users "
            f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
        )
    return parse_key_list(text, origin=str(path))


# --- the key ring ---------------------------------------------------------------------------


class KeyRing:
    """The master keys this process holds: the current one and those it can still read.

    ``reload()`` reads the source again. The credential store calls it when it meets a key
    id it does not know (another process rotated the key file meanwhile), which is what
    lets a rotation proceed while every other process keeps serving. Thread-safe.
    """

    def __init__(
        self,
        keys: Sequence[MasterKey],
        *,
        source: str,
        loader: Callable[[], list[MasterKey]] | None = None,
        key_file: Path | None = None,
    ) -> None:
        if not keys:
            raise ConfigurationError(f"{source}: no master key")
        self._lock = threading.Lock()
        self._keys = list(keys)
        self._loader = loader
        #: Human-readable origin of the keys, for messages ("FORGELINE_MASTER_KEY", a path).
        self.source = source
        #: The key file when keys come from one (``rotate-key`` rewrites it); else ``None``.
        self.key_file = key_file

    @property
    def current(self) -> MasterKey:
        """The key new ciphertexts are sealed with."""
        with self._lock:
            return self._keys[0]

    @property
    def keys(self) -> list[MasterKey]:
        """Every key, current first."""
        with self._lock:
            return list(self._keys)

    @property
    def ids(self) -> list[str]:
        """Every key id, current first."""
        with self._lock:
            return [key.id for key in self._keys]

    def find(self, key_id: str) -> MasterKey | None:
        """The key with this id, or ``None``."""
        with self._lock:
            return next((key for key in self._keys if key.id == key_id), None)

    def require(self, key_id: str, *, reload: bool = True) -> MasterKey:
        """The key with this id, reloading the source once if unknown; else ``CredentialError``."""
        key = self.find(key_id)
        if key is None and reload and self.reload():
            key = self.find(key_id)
        if key is None:
            raise CredentialError(
                f"master key {key_id} is not configured in this process (it holds "
                f"{', '.join(self.ids)} from {self.source}): the master key is wrong, or a "
                "rotation moved to a key this process has not been given"
            )
        return key

    def reload(self) -> bool:
        """Read the source again; True if it can change (a key file), False if fixed.

        A synchronous read of a small local file, done only when an unknown key id shows
        up (once per rotation), so callers on the event loop may call it directly.
        """
        if self._loader is None:
            return False
        keys = self._loader()
        with self._lock:
            self._keys = keys
        return True

    def replace(self, keys: Sequence[MasterKey]) -> None:
        """Hold ``keys`` from now on (after this process rewrote the key file)."""
        if not keys:
            raise ConfigurationError("a key ring needs at least one key")
        with self._lock:
            self._keys = list(keys)


def load_keyring(master_key: str | None, data_dir: Path) -> KeyRing:
    """The key ring from ``FORGELINE_MASTER_KEY`` if given, else the data dir's key file.

    The key file is created (owner-only, atomically) on first use.
    """
    if master_key is not None and master_key.strip():
        keys = parse_key_list(master_key, origin="FORGELINE_MASTER_KEY")
        return KeyRing(keys, source="FORGELINE_MASTER_KEY")
    path = data_dir / KEY_FILE_NAME
    if not path.exists():
        create_key_file(path)
    return KeyRing(
        read_key_file(path), source=str(path), loader=lambda: read_key_file(path), key_file=path
    )
