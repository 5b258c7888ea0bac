"""Browser sessions of the dashboard, and the CSRF tokens of its forms.

A session is a cookie holding the API token it was opened with, encrypted and signed with a
key of forgeline's (Fernet: AES-CBC with HMAC-SHA256, stamped with its creation time), so it
is opaque to the browser, cannot be forged or altered, and expires after a fixed time. It
keeps no state of its own: every request checks the token inside through
:meth:`AuthService.verify`, so a revoked token ends its sessions at once.

Forms carry a CSRF token: an HMAC, under another key derived from the same secret, of the
session cookie (or, before sign-in, of a random per-browser cookie) — a signed double
submit. A cross-site page can neither read the cookie nor compute the HMAC, and the cookies
are ``SameSite=Strict``, so a forged POST carries neither a cookie nor a matching token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from forgeline.domain.errors import AuthError
from forgeline.domain.secrets import Secret
from forgeline.ports.store import ApiToken
from forgeline.services.auth import AuthService

#: The session cookie's name.
SESSION_COOKIE = "forgeline_session"
#: The key file generated in the data directory when no session secret is configured.
SESSION_KEY_FILE = "session.key"


def _derive(secret: Secret, purpose: bytes) -> bytes:
    """A 32-byte key for one ``purpose`` only (HKDF-SHA256), so the cookie's key and the
    CSRF key are independent although both come from one configured secret."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose)
    return hkdf.derive(secret.reveal().encode())


class SessionService:
    """Opens and checks dashboard sessions; makes and checks CSRF tokens."""

    def __init__(self, auth: AuthService, secret: Secret, *, ttl_s: float) -> None:
        self._auth = auth
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(secret, b"forgeline session")))
        self._csrf_key = _derive(secret, b"forgeline csrf")
        #: How long a session lasts (the cookie's ``Max-Age`` too).
        self.ttl_s = int(ttl_s)

    async def open(self, token: str) -> tuple[ApiToken, str]:
        """Sign in with the API token ``token``: its record and the session cookie's value.
        ``AuthError`` (401) for a token that is unknown or revoked."""
        record = await self._auth.verify(token)
        return record, self._fernet.encrypt(token.strip().encode()).decode("ascii")

    async def check(self, cookie: str) -> ApiToken:
        """The token of a session cookie; ``AuthError`` (401) when the cookie is forged,
        altered or expired, or its token was revoked."""
        try:
            token = self._fernet.decrypt(cookie, ttl=self.ttl_s).decode()
        except (InvalidToken, ValueError):
            raise AuthError("the session has expired or is not valid: sign in again") from None
        return await self._auth.verify(token)

    def csrf_token(self, binding: str) -> str:
        """The CSRF token of forms shown to the holder of the cookie value ``binding``."""
        return hmac.new(self._csrf_key, binding.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, binding: str, sent: str) -> bool:
        """True when ``sent`` is the CSRF token of ``binding`` (compared in constant time)."""
        expected = self.csrf_token(binding).encode()
        return bool(binding) and hmac.compare_digest(expected, sent.encode())
