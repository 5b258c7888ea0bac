"""Dashboard sessions and CSRF tokens, on a real SQLite store of tokens."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forgeline.adapters.sql.database import SqliteDatabase
from forgeline.adapters.sql.migrate import migrate
from forgeline.adapters.store import build_store
from forgeline.domain.errors import AuthError
from forgeline.domain.secrets import Secret
from forgeline.services.auth import AuthService, Role
from forgeline.services.sessions import SessionService


@pytest.fixture
async def auth(tmp_path: Path) -> AsyncIterator[AuthService]:
    """Token checks on a migrated, empty SQLite store."""
    db = SqliteDatabase(tmp_path / "t.db")
    await db.open()
    await migrate(db)
    try:
        yield AuthService(build_store(db))
    finally:
        await db.aclose()


def _sessions(auth: AuthService, key: str = "k" * 64, ttl_s: float = 3600) -> SessionService:
    return SessionService(auth, Secret(key), ttl_s=ttl_s)


async def test_a_session_names_its_token_without_showing_it(auth: AuthService) -> None:
    """A valid token opens a session whose cookie is opaque and checks back to the token."""
    new = await auth.create("alice", Role.BUILDER)
    sessions = _sessions(auth)
    record, cookie = await sessions.open(new.value)
    assert record.id == new.record.id
    assert new.value not in cookie
    assert (await sessions.check(cookie)).id == new.record.id


async def test_unknown_tokens_and_bad_cookies_are_refused(auth: AuthService) -> None:
    """No session for an unknown token; an altered cookie, one made with another key and
    garbage are all a 401."""
    with pytest.raises(AuthError):
        await _sessions(auth).open("flt_unknown")
    new = await auth.create("alice")
    _record, cookie = await _sessions(auth).open(new.value)
    altered = cookie[:-6] + ("A" if cookie[-6] != "A" else "B") + cookie[-5:]
    for bad in (altered, "garbage", "", "é" * 20):
        with pytest.raises(AuthError) as refused:
            await _sessions(auth).check(bad)
        assert not refused.value.forbidden
    with pytest.raises(AuthError):
        await _sessions(auth, key="other" * 10).check(cookie)


async def test_a_session_expires(auth: AuthService, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cookie older than the session's lifetime is refused, though its token is valid."""
    new = await auth.create("alice")
    sessions = _sessions(auth, ttl_s=60)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now - 61)
    _record, cookie = await sessions.open(new.value)
    monkeypatch.setattr(time, "time", lambda: now)
    with pytest.raises(AuthError, match="expired"):
        await sessions.check(cookie)


def test_csrf_tokens_are_bound_to_their_cookie(auth: AuthService) -> None:
    """A CSRF token holds for the cookie it was made for, under the key it was made with,
    and for nothing else; an empty binding never holds."""
    sessions = _sessions(auth)
    token = sessions.csrf_token("cookie-a")
    assert sessions.csrf_valid("cookie-a", token)
    assert not sessions.csrf_valid("cookie-b", token)
    assert not _sessions(auth, key="other" * 10).csrf_valid("cookie-a", token)
    assert not sessions.csrf_valid("", sessions.csrf_token(""))
    assert not sessions.csrf_valid("cookie-a", "")
    assert not sessions.csrf_valid("cookie-a", "é" * 64)
