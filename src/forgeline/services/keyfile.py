"""Keys forgeline generates for itself on first run: random, in an owner-only file of the
data directory, unless the operator configures one."""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from pathlib import Path
from typing import Final

from forgeline.domain.errors import ConfigurationError
from forgeline.domain.secrets import Secret

#: Random bytes of a generated key (written as hex).
KEY_BYTES: Final = 32


def ensure_key_file(path: Path, *, configured: str | None, name: str) -> Secret:
    """``configured`` if set, else the key in ``path``, created on first use.

    The file gets fresh random bytes, readable by its owner only (0600). Creation is
    atomic (write a temporary file, then ``link`` it into place, which fails if another
    process won the race), so processes starting together all end up with the same key.
    """
    if configured:
        return Secret(configured, name=name)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(KEY_BYTES) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    try:
        value = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeError) as exc:
        raise ConfigurationError(f"cannot read the key file {path}") from exc
    if not value:
        raise ConfigurationError(f"the key file {path} is empty")
    return Secret(value, name=name)
