"""Envelope encryption of credential values with AES-256-GCM.

Each value is encrypted under its own fresh data key (DEK); the DEK is encrypted
("wrapped") under the master key. A stored credential is therefore three things:

``key_id``
    The id of the master key that wrapped the DEK (see :mod:`.keys`).
``wrapped_key``
    ``nonce (12 bytes) ‖ AES-256-GCM(master key, DEK) ‖ tag (16)``.
``ciphertext``
    ``nonce (12 bytes) ‖ AES-256-GCM(DEK, value as UTF-8) ‖ tag (16)``.

Both layers take a random 96-bit nonce per encryption (a fresh DEK per value already makes
nonce reuse impossible on the inner layer; the outer one stays far below the 2³² messages
NIST allows per key under random nonces). Both bind the same *associated data*: a
canonical encoding of the format version, the scope (global or the project) and the name.
A ciphertext copied onto another credential, or into another scope, therefore fails its
authentication tag instead of decrypting, and so does any flipped bit or a wrong key:
every such case raises ``CredentialError``, never returns a wrong value.

Why envelopes: master-key operations are confined to wrapping 32-byte DEKs, so the master
key could live in a KMS or HSM that only ever sees DEKs; and per-value keys keep the number
of messages under any one key small. A rotation nevertheless re-encrypts the value too
(fresh DEK, fresh nonces), so an old database backup plus the old master key reveal nothing
about ciphertexts written after the rotation.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from forgeline.adapters.credentials.keys import KEY_BYTES, KeyRing, MasterKey
from forgeline.domain.errors import CredentialError

#: Bytes of an AES-GCM nonce (the 96 bits GCM is designed for).
NONCE_BYTES: Final = 12
#: Bytes of the GCM authentication tag appended by ``cryptography``.
TAG_BYTES: Final = 16
_AAD_LABEL: Final = "forgeline.credential.v1"


@dataclass(frozen=True, slots=True)
class SealedValue:
    """What the database stores for one credential value (all of it safe to store)."""

    key_id: str
    wrapped_key: bytes
    ciphertext: bytes


def scope_label(project: str | None) -> str:
    """How a scope is written in messages: ``global`` or ``project 'p'``."""
    return f"project {project!r}" if project else "global scope"


def associated_data(name: str, project: str | None) -> bytes:
    """The bytes bound to a credential's ciphertexts: version, scope and name.

    JSON of a fixed-shape list is unambiguous whatever the names contain, unlike a
    separator-joined string.
    """
    scope = ["project", project] if project else ["global", ""]
    return json.dumps([_AAD_LABEL, *scope, name], separators=(",", ":")).encode()


def _encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise InvalidTag
    return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


def seal(key: MasterKey, name: str, project: str | None, value: str) -> SealedValue:
    """Encrypt ``value`` for the credential ``name`` in ``project`` (``None``: global)."""
    aad = associated_data(name, project)
    dek = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    return SealedValue(
        key_id=key.id,
        wrapped_key=_encrypt(key.material, dek, aad),
        ciphertext=_encrypt(dek, value.encode("utf-8"), aad),
    )


def unseal(ring: KeyRing, name: str, project: str | None, sealed: SealedValue) -> str:
    """Decrypt a stored value; ``CredentialError`` if the key is wrong or anything was altered."""
    key = ring.require(sealed.key_id)
    aad = associated_data(name, project)
    where = f"credential {name!r} ({scope_label(project)})"
    try:
        dek = _decrypt(key.material, bytes(sealed.wrapped_key), aad)
    except InvalidTag as exc:
        raise CredentialError(
            f"{where} cannot be decrypted with master key {key.id}: its wrapped data key "
            "was altered or belongs to another credential"
        ) from exc
    try:
        plaintext = _decrypt(dek, bytes(sealed.ciphertext), aad)
    except InvalidTag as exc:
        raise CredentialError(
            f"{where} failed authentication: its ciphertext was altered or belongs to "
            "another credential"
        ) from exc
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError as exc:  # pragma: no cover - authenticated data is ours
        raise CredentialError(f"{where} does not hold UTF-8 text") from exc
