"""The credential store's rules: validation, key choice, decryption, rotation.

The SQL store (:mod:`.store`) only runs statements; every rule about keys and scopes
lives here once.

Rotation without downtime
    0. Check that this process holds every key some credential is encrypted under; if not,
       refuse before changing anything.
    1. Pick the target key. Key file: a fresh key, written *in front of* the old ones
       (``[new, old]``), so every process can read both; if the file already holds several
       keys an earlier rotation was interrupted and is resumed with its key. Environment:
       the first key of ``FORGELINE_MASTER_KEY`` (the operator put it there).
    2. Record the target as the database's current key. Writers read that record inside
       their own transaction (``FOR SHARE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite),
       so once the switch commits no writer anywhere still seals under an old key. A
       process that does not know the new key yet re-reads its key file; a process that
       cannot get it fails its write with a clear error rather than write something the
       others cannot read.
    3. Re-encrypt every credential still under another key, batch by batch, each row
       compare-and-swapped on its old ciphertext so a concurrent ``put`` always wins.
    4. Key file: rewrite it with the new key only; the old key is no longer needed.
       Environment: the report says the old key may now be removed from the variable.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from forgeline.adapters.credentials.crypto import SealedValue, scope_label, seal, unseal
from forgeline.adapters.credentials.keys import KeyRing, MasterKey, read_key_file, write_key_file
from forgeline.domain.errors import CredentialError, ValidationError
from forgeline.domain.project import validate_project_name
from forgeline.domain.secrets import Secret
from forgeline.ports.credentials import RotationReport

#: The largest value accepted (PEM bundles and service-account JSON fit comfortably).
MAX_VALUE_BYTES: Final = 64 * 1024
#: Rows re-encrypted per transaction during a rotation: small enough that writers never
#: wait long behind it, large enough that a rotation of thousands takes seconds.
ROTATION_BATCH: Final = 100
#: Upper bound on ``uses(limit=…)``.
MAX_USES_LIMIT: Final = 10_000


@dataclass(frozen=True, slots=True)
class StoredRow:
    """A credential row as read for decryption or rotation."""

    id: int
    name: str
    project: str | None
    sealed: SealedValue


def db_scope(project: str | None) -> str:
    """The ``project`` column's value: ``''`` stands for the global scope."""
    return project or ""


def from_db_scope(value: str) -> str | None:
    """Inverse of :func:`db_scope`."""
    return value or None


def check_scope(project: str | None) -> str | None:
    """Validate an optional project name (``None`` is the global scope)."""
    if project is None:
        return None
    return validate_project_name(project)


def check_value(value: Secret) -> str:
    """The plaintext of a value about to be stored, if acceptable."""
    if not isinstance(value, Secret):
        raise ValidationError("a credential value must be passed as a Secret")
    plaintext = value.reveal()
    if not plaintext:
        raise ValidationError("a credential value must not be empty")
    if len(plaintext.encode("utf-8")) > MAX_VALUE_BYTES:
        raise ValidationError(f"a credential value must be at most {MAX_VALUE_BYTES} bytes")
    return plaintext


def check_limit(limit: int) -> int:
    """Clamp a listing limit into ``[1, MAX_USES_LIMIT]``."""
    return max(1, min(int(limit), MAX_USES_LIMIT))


@contextlib.contextmanager
def _rotation_lock(key_file: Path) -> Iterator[None]:
    # Two rotate-key commands on one data dir must not interleave their key-file rewrites.
    # flock is released by the kernel if the process dies, so a crash never wedges it; it
    # is taken without blocking, so this never waits.
    lock_path = key_file.with_name(f"{key_file.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise CredentialError(
                f"another key rotation holds {lock_path}; wait for it to finish"
            ) from exc
        yield
    finally:
        os.close(fd)


class CredentialStoreBase:
    """The rules of the SQL credential store (see the module docstring)."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring

    # --- pieces the store calls inside its transactions --------------------------------------

    def key_for_writing(self, current_id: str | None) -> MasterKey:
        """The key to seal with, given the database's current key id (``None``: not set yet)."""
        if current_id is None:
            return self.keyring.current
        try:
            return self.keyring.require(current_id)
        except CredentialError as exc:
            raise CredentialError(
                f"cannot store credentials: the database's current master key is {current_id}, "
                f"which this process does not hold (it has {', '.join(self.keyring.ids)} from "
                f"{self.keyring.source}); configure the right FORGELINE_MASTER_KEY or key file"
            ) from exc

    def seal(self, key: MasterKey, name: str, project: str | None, plaintext: str) -> SealedValue:
        """Encrypt a value for one credential."""
        return seal(key, name, project, plaintext)

    def unseal(self, row: StoredRow) -> Secret:
        """Decrypt a row into a :class:`Secret` named after the credential."""
        return Secret(unseal(self.keyring, row.name, row.project, row.sealed), name=row.name)

    # --- what the SQL store provides for rotation --------------------------------------------

    async def _set_current_key(self, key_id: str) -> None:
        raise NotImplementedError

    async def _rows_not_under(self, key_id: str, after_id: int, limit: int) -> list[StoredRow]:
        raise NotImplementedError

    async def _swap_sealed(self, swaps: list[tuple[StoredRow, SealedValue]]) -> int:
        """Replace each row's sealed value if it still holds the old one; returns how many."""
        raise NotImplementedError

    async def _count_not_under(self, key_id: str) -> int:
        raise NotImplementedError

    # --- rotation --------------------------------------------------------------------------

    async def _key_ids_in_use(self) -> list[str]:
        raise NotImplementedError

    async def rotate_key(self) -> RotationReport:
        """Re-encrypt everything under a new master key (see the module docstring)."""
        key_file = self.keyring.key_file
        if key_file is None:
            await self._check_keys_held()
            return await self._rotate_to(self.keyring.current, key_file=None)
        with _rotation_lock(key_file):
            self.keyring.reload()
            await self._check_keys_held()
            return await self._rotate_file(key_file)

    async def _check_keys_held(self) -> None:
        # Before anything changes: a rotation started without every key in use would switch
        # the database to the new key and then fail on what it cannot read, leaving
        # processes that hold only the old key unable to write. Refuse up front instead.
        missing = [k for k in await self._key_ids_in_use() if self.keyring.find(k) is None]
        if missing:
            raise CredentialError(
                f"credentials are encrypted under master key(s) {', '.join(missing)}, which "
                f"this process does not hold (it has {', '.join(self.keyring.ids)} from "
                f"{self.keyring.source}); give rotate-key every key in use (e.g. "
                "FORGELINE_MASTER_KEY=NEW,OLD), or, if a key is lost, delete the credentials "
                "it protects and set them again"
            )

    async def _rotate_file(self, key_file: Path) -> RotationReport:
        keys = await asyncio.to_thread(read_key_file, key_file)
        notes: list[str] = []
        if len(keys) > 1:
            # A previous rotation stopped between steps 1 and 4: finish it with its key
            # rather than pile up another one.
            target = keys[0]
            notes.append(f"resumed an unfinished rotation to key {target.id}")
        else:
            target = MasterKey.generate()
            keys = [target, *keys]
            await asyncio.to_thread(write_key_file, key_file, keys)
        self.keyring.replace(keys)
        report = await self._rotate_to(target, key_file=key_file, notes=notes)
        await asyncio.to_thread(write_key_file, key_file, [target])
        self.keyring.replace([target])
        return report

    async def _rotate_to(
        self, target: MasterKey, *, key_file: Path | None, notes: list[str] | None = None
    ) -> RotationReport:
        notes = list(notes or [])
        old_ids = [key_id for key_id in self.keyring.ids if key_id != target.id]
        await self._set_current_key(target.id)
        moved = 0
        unreadable: list[str] = []
        after = 0
        while True:
            rows = await self._rows_not_under(target.id, after, ROTATION_BATCH)
            if not rows:
                break
            after = rows[-1].id
            swaps: list[tuple[StoredRow, SealedValue]] = []
            for row in rows:
                if row.sealed.key_id not in old_ids:
                    old_ids.append(row.sealed.key_id)
                try:
                    secret = self.unseal(row)
                except CredentialError:
                    unreadable.append(f"{row.name!r} ({scope_label(row.project)})")
                    continue
                swaps.append((row, seal(target, row.name, row.project, secret.reveal())))
            moved += await self._swap_sealed(swaps)
        # A swap loses only to a concurrent put, which sealed under the target key already;
        # so anything left now is exactly what could not be decrypted.
        if unreadable or await self._count_not_under(target.id):
            raise CredentialError(
                f"rotation to master key {target.id} re-encrypted {moved} credential(s) but "
                f"cannot decrypt {', '.join(unreadable) or 'some credentials'} with the keys "
                f"held ({', '.join(self.keyring.ids)}); the old keys are kept. Delete or set "
                "those credentials again, then run rotate-key again"
            )
        if key_file is None and len(self.keyring.ids) > 1:
            notes.append(
                "every credential is now under the first key of FORGELINE_MASTER_KEY; remove "
                "the other keys from the variable (after all processes run with it)"
            )
        elif key_file is None and moved == 0:
            notes.append(
                "nothing to re-encrypt: to rotate, put a new key first in FORGELINE_MASTER_KEY "
                "(comma-separated, e.g. NEW,OLD) on every process, then run rotate-key again"
            )
        return RotationReport(
            key_id=target.id,
            re_encrypted=moved,
            retired_key_ids=tuple(old_ids),
            old_keys_still_configured=key_file is None and len(self.keyring.ids) > 1,
            notes=tuple(notes),
        )
