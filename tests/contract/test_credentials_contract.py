"""The CredentialStore contract, on SQLite and a real PostgreSQL.

Values are random per test, so finding one in a file or a table means it leaked.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from forgeline.adapters.credentials import SqlCredentialStore, open_credential_store
from forgeline.adapters.credentials.keys import (
    KeyRing,
    MasterKey,
    load_keyring,
    read_key_file,
    write_key_file,
)
from forgeline.adapters.sql.database import Database, PostgresDatabase, SqliteDatabase
from forgeline.domain.agent import AgentEvent, AgentResult, RunStatus, ToolResultData
from forgeline.domain.errors import (
    CredentialError,
    CredentialNotFoundError,
    MissingCredentialsError,
    StorageError,
    ValidationError,
)
from forgeline.domain.project import Project
from forgeline.domain.secrets import Secret
from forgeline.logs import Redactor
from forgeline.services.credentials import CredentialInjector, reveal_env
from forgeline.services.redaction import redact_event, redact_message, redact_payload
from tests.contract.conftest import Target

Store = SqlCredentialStore


def value(label: str = "v") -> str:
    """A fresh random credential value."""
    return f"{label}-{secrets.token_urlsafe(24)}"


def ring(*keys: MasterKey) -> KeyRing:
    """A fixed key ring, as FORGELINE_MASTER_KEY gives."""
    return KeyRing(list(keys), source="FORGELINE_MASTER_KEY")


@dataclass
class Env:
    """A migrated database of one dialect and a way to build stores on it."""

    db: Database
    key: MasterKey

    def store(self, keyring: KeyRing | None = None) -> Store:
        """A store on this database (default: the environment's key)."""
        return open_credential_store(self.db, keyring or ring(self.key))

    async def execute(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders) and return its rows."""
        if isinstance(self.db, SqliteDatabase):

            def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
                return [tuple(row) for row in conn.execute(sql, params).fetchall()]

            return await self.db.write(run)
        async with self.db.connection() as conn:
            cur = await conn.execute(sql.replace("?", "%s"), params)
            return list(await cur.fetchall()) if cur.description else []


@asynccontextmanager
async def _opened(target: Target) -> AsyncIterator[Env]:
    db = target.handle(max_size=4)
    await db.open()
    try:
        yield Env(db=db, key=MasterKey.generate())
    finally:
        await db.aclose()


@pytest.fixture
async def env(target: Target) -> AsyncIterator[Env]:
    """A fresh, migrated database of each dialect."""
    async with _opened(target) as built:
        yield built


@pytest.fixture
async def sqlite_env(sqlite_target: Target) -> AsyncIterator[Env]:
    """A fresh, migrated SQLite database."""
    async with _opened(sqlite_target) as built:
        yield built


@pytest.fixture
async def pg_env(pg_target: Target) -> AsyncIterator[Env]:
    """A fresh, migrated PostgreSQL database."""
    async with _opened(pg_target) as built:
        yield built


# --- put / get / list / delete ------------------------------------------------------------


async def test_put_get_round_trip(env: Env) -> None:
    """A stored value reads back as a Secret named after the credential, masked when shown."""
    store = env.store()
    plain = value()
    info = await store.put("anthropic-key", Secret(plain))
    assert (info.name, info.project, info.last_used_at) == ("anthropic-key", None, None)
    got = await store.get("anthropic-key")
    assert got.reveal() == plain
    assert got.name == "anthropic-key"
    assert plain not in repr(got) + str(got) + f"{got}"
    assert str(got) == "[REDACTED:anthropic-key]"


async def test_put_replaces_and_keeps_created_at(env: Env) -> None:
    """Setting a credential again replaces its value; created_at stays, updated_at moves."""
    store = env.store()
    first = await store.put("git-token", Secret(value("one")))
    second_value = value("two")
    second = await store.put("git-token", Secret(second_value))
    assert second.created_at == first.created_at
    assert second.updated_at >= first.updated_at
    assert (await store.get("git-token")).reveal() == second_value
    assert [i.name for i in await store.list()] == ["git-token"]


async def test_list_never_shows_values(env: Env) -> None:
    """list gives names, scopes and times; no value appears in any field."""
    store = env.store()
    plains = [value("a"), value("b")]
    await store.put("a-key", Secret(plains[0]))
    await store.put("b-key", Secret(plains[1]), project="myapp")
    infos = await store.list()
    assert [(i.name, i.scope, i.project) for i in infos] == [
        ("a-key", "global", None),
        ("b-key", "project", "myapp"),
    ]
    dumped = repr(infos) + repr([i.to_dict() for i in infos])
    assert not any(p in dumped for p in plains)
    assert set(infos[0].to_dict()) == {
        "name",
        "scope",
        "project",
        "created_at",
        "updated_at",
        "last_used_at",
    }


async def test_delete_and_not_found(env: Env) -> None:
    """delete removes exactly one scope's credential; missing ones give CredentialNotFoundError."""
    store = env.store()
    await store.put("tok", Secret(value()))
    await store.delete("tok")
    with pytest.raises(CredentialNotFoundError, match="'tok'"):
        await store.get("tok")
    with pytest.raises(CredentialNotFoundError, match="global scope"):
        await store.delete("tok")
    with pytest.raises(CredentialNotFoundError, match="project 'myapp'"):
        await store.delete("tok", project="myapp")


async def test_validation(env: Env) -> None:
    """Bad names, bad project names and empty values are refused before anything is stored."""
    store = env.store()
    for bad in ["", "has space", "../etc", "-lead", "x" * 129]:
        with pytest.raises(ValidationError):
            await store.put(bad, Secret(value()))
    with pytest.raises(ValidationError):
        await store.put("ok", Secret(value()), project="Not_A_Project")
    with pytest.raises(ValidationError, match="empty"):
        await store.put("ok", Secret(""))
    with pytest.raises(ValidationError, match="at most"):
        await store.put("ok", Secret("x" * (64 * 1024 + 1)))
    with pytest.raises(ValidationError, match="environment variable"):
        await store.resolve({"1BAD": "ok"}, project=None, task_id=None)
    assert await store.list() == []


@pytest.mark.postgres
async def test_unmigrated_schema_says_how_to_fix(tmp_path: Path, pg_url: str) -> None:
    """Without the schema, both dialects raise StorageError pointing at `forgeline db migrate`."""
    for db in (SqliteDatabase(tmp_path / "empty.db"), PostgresDatabase(pg_url, max_size=1)):
        await db.open()
        try:
            with pytest.raises(StorageError, match="forgeline db migrate"):
                await open_credential_store(db, ring(MasterKey.generate())).list()
        finally:
            await db.aclose()


# --- scopes -------------------------------------------------------------------------------


async def test_project_scope_overrides_global(env: Env) -> None:
    """A project's credential wins over the global one of the same name, for that project only."""
    store = env.store()
    global_value, project_value = value("global"), value("project")
    await store.put("api-key", Secret(global_value))
    await store.put("api-key", Secret(project_value), project="myapp")
    assert (await store.get("api-key")).reveal() == global_value
    assert (await store.get("api-key", project="myapp")).reveal() == project_value
    assert (await store.get("api-key", project="other")).reveal() == global_value

    effective = await store.list(project="myapp")
    assert [(i.name, i.project) for i in effective] == [("api-key", "myapp")]
    await store.put("shared", Secret(value()))
    effective = await store.list(project="myapp")
    assert [(i.name, i.project) for i in effective] == [("api-key", "myapp"), ("shared", None)]

    await store.delete("api-key", project="myapp")
    assert (await store.get("api-key", project="myapp")).reveal() == global_value


async def test_project_only_credential_is_invisible_elsewhere(env: Env) -> None:
    """A project-scoped credential is not visible globally nor to other projects."""
    store = env.store()
    await store.put("deploy", Secret(value()), project="myapp")
    with pytest.raises(CredentialNotFoundError):
        await store.get("deploy")
    with pytest.raises(CredentialNotFoundError):
        await store.get("deploy", project="other")


# --- injection and use records -------------------------------------------------------------


async def test_uses_are_recorded(env: Env) -> None:
    """get with a task id records the use and last_used_at; the records outlive the credential."""
    store = env.store()
    await store.put("tok", Secret(value()))
    await store.put("tok", Secret(value()), project="myapp")
    await store.get("tok")  # no task: nothing recorded
    assert await store.uses() == []
    await store.get("tok", project="myapp", task_id="task-1")
    await store.get("tok", task_id="task-2")
    uses = await store.uses()
    assert [(u.name, u.project, u.task_id) for u in uses] == [
        ("tok", None, "task-2"),
        ("tok", "myapp", "task-1"),
    ]
    assert [u.task_id for u in await store.uses(task_id="task-1")] == ["task-1"]
    assert len(await store.uses(name="tok", limit=1)) == 1
    infos = {i.project: i for i in await store.list()}
    assert infos[None].last_used_at is not None
    assert infos["myapp"].last_used_at is not None
    await store.delete("tok")
    assert len(await store.uses(name="tok")) == 2


async def test_injection_resolves_records_and_registers(env: Env) -> None:
    """for_build maps env vars to Secrets, records one use per credential, masks every value."""
    store = env.store()
    redactor = Redactor()
    injector = CredentialInjector(store, redactor)
    anthropic, git = value("anthropic"), value("git")
    await store.put("anthropic-key", Secret(anthropic))
    await store.put("git-token", Secret(git), project="myapp")
    project = Project(
        name="myapp",
        repo_url="file:///x",
        credentials={"ANTHROPIC_API_KEY": "anthropic-key", "GIT_TOKEN": "git-token"},
    )
    secrets_ = await injector.for_build(project, task_id="t-42")
    assert reveal_env(secrets_) == {"ANTHROPIC_API_KEY": anthropic, "GIT_TOKEN": git}
    assert sorted((u.name, u.task_id) for u in await store.uses(task_id="t-42")) == [
        ("anthropic-key", "t-42"),
        ("git-token", "t-42"),
    ]
    line = f"env: ANTHROPIC_API_KEY={anthropic} GIT_TOKEN={git}"
    assert redactor.redact(line) == (
        "env: ANTHROPIC_API_KEY=[REDACTED:anthropic-key] GIT_TOKEN=[REDACTED:git-token]"
    )
    token = await injector.secret("git-token", project="myapp", task_id="t-43")
    assert token.reveal() == git


async def test_unknown_credential_named_by_a_project(env: Env) -> None:
    """A project naming missing credentials gets one error naming them all, no value, no use."""
    store = env.store()
    present = value()
    await store.put("anthropic-key", Secret(present))
    injector = CredentialInjector(store, Redactor())
    mapping = {"ANTHROPIC_API_KEY": "anthropic-key", "DEPLOY": "deploy-key", "X": "x-key"}
    with pytest.raises(MissingCredentialsError) as info:
        await injector.resolve(mapping, project="myapp", task_id="t-1")
    message = info.value.message
    assert "'deploy-key' (for DEPLOY)" in message
    assert "'x-key' (for X)" in message
    assert "project 'myapp'" in message
    assert present not in message
    assert info.value.missing == {"DEPLOY": "deploy-key", "X": "x-key"}
    assert isinstance(info.value, CredentialNotFoundError)
    assert await store.uses() == []


# --- nothing in plaintext at rest ------------------------------------------------------------


async def test_sqlite_file_and_wal_hold_no_plaintext(sqlite_env: Env) -> None:
    """The SQLite database, its WAL before and after a checkpoint, never contain a value."""
    env = sqlite_env
    assert isinstance(env.db, SqliteDatabase)
    store = env.store()
    plains = [value("alpha"), value("beta"), value("gamma")]
    await store.put("a", Secret(plains[0]))
    await store.put("b", Secret(plains[1]), project="myapp")
    await store.put("a", Secret(plains[2]))  # replaced: the old value must not linger either
    await store.get("a", task_id="t")
    path = env.db.path
    files = [path, path.with_name(path.name + "-wal")]
    before = b"".join(p.read_bytes() for p in files if p.exists())
    assert path.with_name(path.name + "-wal").exists()
    checkpoint = await env.db.read(
        lambda c: c.execute("pragma wal_checkpoint(truncate)").fetchone()
    )
    assert tuple(checkpoint) == (0, 0, 0)  # not busy, WAL emptied into the main file
    after = b"".join(p.read_bytes() for p in files if p.exists())
    for plain in plains:
        for blob in (before, after):
            assert plain.encode() not in blob
            assert plain.encode("utf-16-le") not in blob
    assert b"alpha" not in after  # not even the readable label of the value


@pytest.mark.postgres
async def test_postgres_table_holds_no_plaintext(pg_env: Env) -> None:
    """In PostgreSQL neither the rows as text nor the table's heap file contain a value."""
    env = pg_env
    assert isinstance(env.db, PostgresDatabase)
    store = env.store()
    plains = [value("alpha"), value("beta")]
    await store.put("a", Secret(plains[0]))
    await store.put("a", Secret(plains[1]), project="myapp")
    await store.get("a", project="myapp", task_id="t")
    async with env.db.connection() as conn:
        rows = await (await conn.execute("select t::text from credentials t")).fetchall()
        uses = await (await conn.execute("select t::text from credential_uses t")).fetchall()
        blobs = await (
            await conn.execute("select wrapped_key || ciphertext from credentials")
        ).fetchall()
        await conn.execute("checkpoint")
        heap = await (
            await conn.execute("select pg_read_binary_file(pg_relation_filepath('credentials'))")
        ).fetchone()
    text = repr(rows) + repr(uses)
    assert heap is not None
    raw = bytes(heap[0]) + b"".join(bytes(b[0]) for b in blobs)
    assert len(rows) == 2
    for plain in plains:
        assert plain not in text
        assert plain.encode() not in raw


# --- tampering and wrong keys ------------------------------------------------------------


@pytest.mark.parametrize("column", ["ciphertext", "wrapped_key"])
@pytest.mark.parametrize("position", [0, 13, -1])
async def test_tampered_byte_is_detected(env: Env, column: str, position: int) -> None:
    """Flipping one byte anywhere (nonce, body, tag) of either layer gives CredentialError."""
    store = env.store()
    plain = value()
    await store.put("tok", Secret(plain))
    select = f"select {column} from credentials where name = ?"  # noqa: S608 - test constant
    [(blob,)] = await env.execute(select, "tok")
    tampered = bytearray(bytes(blob))
    tampered[position] ^= 0x01
    update = f"update credentials set {column} = ? where name = ?"  # noqa: S608 - test constant
    await env.execute(update, bytes(tampered), "tok")
    with pytest.raises(CredentialError) as info:
        await store.get("tok")
    assert "'tok'" in info.value.message
    assert plain not in info.value.message


async def test_swapped_ciphertexts_fail(env: Env) -> None:
    """Ciphertexts swapped between two credentials, or moved to another scope, never decrypt."""
    store = env.store()
    await store.put("one", Secret(value("one")))
    await store.put("two", Secret(value("two")))
    await store.put("one", Secret(value("scoped")), project="myapp")
    select = "select key_id, wrapped_key, ciphertext from credentials where name = ?"
    [row_one] = await env.execute(select + " and project = ''", "one")
    [row_two] = await env.execute(select, "two")
    update = (
        "update credentials set key_id = ?, wrapped_key = ?, ciphertext = ?"
        " where name = ? and project = ?"
    )
    await env.execute(update, *row_two, "one", "")
    await env.execute(update, *row_one, "two", "")
    with pytest.raises(CredentialError):
        await store.get("one")
    with pytest.raises(CredentialError):
        await store.get("two")
    # The same name in another scope: the scope is bound too.
    await env.execute(update, *row_one, "one", "myapp")
    with pytest.raises(CredentialError):
        await store.get("one", project="myapp")
    # Only the ciphertext moved (the wrapped key stays): the inner layer catches it.
    await store.put("three", Secret(value("three")))
    await store.put("four", Secret(value("four")))
    [(cipher_three,)] = await env.execute(
        "select ciphertext from credentials where name = ?", "three"
    )
    await env.execute("update credentials set ciphertext = ? where name = ?", cipher_three, "four")
    with pytest.raises(CredentialError, match="'four'"):
        await store.get("four")


async def test_wrong_master_key(env: Env) -> None:
    """Another master key cannot read nor write: a clear CredentialError naming the key ids."""
    good = env.store()
    plain = value()
    await good.put("tok", Secret(plain))
    wrong_key = MasterKey.generate()
    wrong = env.store(ring(wrong_key))
    with pytest.raises(CredentialError) as info:
        await wrong.get("tok")
    assert env.key.id in info.value.message
    assert wrong_key.id in info.value.message
    assert plain not in info.value.message
    with pytest.raises(CredentialError, match="current master key"):
        await wrong.put("other", Secret(value()))
    with pytest.raises(CredentialError):
        await wrong.resolve({"T": "tok"}, project=None, task_id="t")
    assert await good.uses() == []


async def test_same_id_different_material_is_refused(env: Env) -> None:
    """A key presenting the right id but other bytes fails authentication, never decrypts."""
    store = env.store()
    await store.put("tok", Secret(value()))
    forged = MasterKey(id=env.key.id, material=secrets.token_bytes(32))
    with pytest.raises(CredentialError, match="cannot be decrypted"):
        await env.store(ring(forged)).get("tok")


# --- rotation ------------------------------------------------------------------------------


async def _fill(store: Store, count: int) -> dict[tuple[str, str | None], str]:
    stored: dict[tuple[str, str | None], str] = {}
    for i in range(count):
        project = "myapp" if i % 3 == 0 else None
        plain = value(f"c{i}")
        await store.put(f"cred-{i}", Secret(plain), project=project)
        stored[(f"cred-{i}", project)] = plain
    return stored


async def _read_all(store: Store, names: dict[tuple[str, str | None], str]) -> None:
    for (name, project), plain in names.items():
        assert (await store.get(name, project=project)).reveal() == plain


async def test_rotation_with_environment_keys(env: Env) -> None:
    """NEW,OLD in the environment: rotate-key moves everything to NEW; OLD is no longer needed."""
    old, new = env.key, MasterKey.generate()
    stored = await _fill(env.store(ring(old)), 7)
    report = await env.store(ring(new, old)).rotate_key()
    assert report.key_id == new.id
    assert report.re_encrypted == 7
    assert report.retired_key_ids == (old.id,)
    assert report.old_keys_still_configured
    await _read_all(env.store(ring(new)), stored)
    with pytest.raises(CredentialError):
        await env.store(ring(old)).get("cred-1")
    [(current,)] = await env.execute("select current_key_id from credential_keyring")
    assert current == new.id
    assert await env.execute("select count(*) from credentials where key_id <> ?", new.id) == [(0,)]
    again = await env.store(ring(new)).rotate_key()
    assert again.re_encrypted == 0
    assert any("nothing to re-encrypt" in note for note in again.notes)


async def test_rotation_with_key_file(env: Env, tmp_path: Path) -> None:
    """Key file: rotate-key generates a key, re-encrypts, and leaves only the new key (0600)."""
    data_dir = tmp_path / "data"
    keyring = load_keyring(None, data_dir)
    key_file = data_dir / "master.key"
    [old] = read_key_file(key_file)
    stored = await _fill(env.store(keyring), 5)
    # A second process on the same data dir, holding the old key only until it reloads.
    other = env.store(load_keyring(None, data_dir))

    report = await env.store(keyring).rotate_key()
    [new] = read_key_file(key_file)
    assert new.id == report.key_id != old.id
    assert report.re_encrypted == 5
    assert not report.old_keys_still_configured
    assert key_file.stat().st_mode & 0o777 == 0o600
    await _read_all(env.store(ring(new)), stored)  # the new key alone suffices
    with pytest.raises(CredentialError):
        await env.store(ring(old)).get("cred-1")

    # The other process meets the new key id, re-reads the key file, and carries on:
    await _read_all(other, stored)
    await other.put("after", Secret("written-after-rotation"))
    [(key_id,)] = await env.execute("select key_id from credentials where name = ?", "after")
    assert key_id == new.id


async def test_writers_during_rotation_use_the_new_key(env: Env) -> None:
    """Puts racing a rotation all end under the new key: nothing is left needing the old one."""
    old, new = env.key, MasterKey.generate()
    await _fill(env.store(ring(old)), 20)
    writer = env.store(ring(new, old))
    latest: dict[str, str] = {}

    async def write(i: int) -> None:
        plain = value(f"w{i}")
        await writer.put(f"cred-{i % 5 + 1}", Secret(plain))
        latest[f"cred-{i % 5 + 1}"] = plain

    await asyncio.gather(env.store(ring(new, old)).rotate_key(), *(write(i) for i in range(20)))
    assert await env.execute("select count(*) from credentials where key_id <> ?", new.id) == [(0,)]
    only_new = env.store(ring(new))
    for name, plain in latest.items():
        assert (await only_new.get(name)).reveal() == plain


async def test_rotation_keeps_old_key_when_something_is_unreadable(
    env: Env, tmp_path: Path
) -> None:
    """A tampered credential stops the rotation from dropping the old key; the rest moved."""
    data_dir = tmp_path / "data"
    keyring = load_keyring(None, data_dir)
    await _fill(env.store(keyring), 3)
    [(blob,)] = await env.execute("select ciphertext from credentials where name = ?", "cred-1")
    broken = bytearray(bytes(blob))
    broken[-1] ^= 0xFF
    await env.execute(
        "update credentials set ciphertext = ? where name = ?", bytes(broken), "cred-1"
    )
    with pytest.raises(CredentialError, match="'cred-1'") as info:
        await env.store(keyring).rotate_key()
    assert "re-encrypted 2" in info.value.message
    assert len(read_key_file(data_dir / "master.key")) == 2  # old key kept
    await env.store(keyring).delete("cred-1")
    report = await env.store(load_keyring(None, data_dir)).rotate_key()
    assert "resumed" in " ".join(report.notes)
    assert len(read_key_file(data_dir / "master.key")) == 1


async def test_rotation_without_the_old_key_changes_nothing(env: Env) -> None:
    """rotate-key given only NEW while credentials are under OLD refuses before switching."""
    old, new = env.key, MasterKey.generate()
    stored = await _fill(env.store(ring(old)), 2)
    with pytest.raises(CredentialError, match=f"master key\\(s\\) {old.id}") as info:
        await env.store(ring(new)).rotate_key()
    assert "FORGELINE_MASTER_KEY=NEW,OLD" in info.value.message
    [(current,)] = await env.execute("select current_key_id from credential_keyring")
    assert current == old.id
    await _read_all(env.store(ring(old)), stored)
    await env.store(ring(old)).put("still-writable", Secret(value()))


async def test_interrupted_rotation_resumes_with_its_key(env: Env, tmp_path: Path) -> None:
    """A key file left with NEW,OLD (a crash mid-rotation) is finished with NEW, not a third key."""
    data_dir = tmp_path / "data"
    keyring = load_keyring(None, data_dir)
    stored = await _fill(env.store(keyring), 2)
    [old] = read_key_file(data_dir / "master.key")
    new = MasterKey.generate()
    write_key_file(data_dir / "master.key", [new, old])
    report = await env.store(load_keyring(None, data_dir)).rotate_key()
    assert report.key_id == new.id
    assert read_key_file(data_dir / "master.key") == [new]
    await _read_all(env.store(ring(new)), stored)


async def test_rotation_refuses_to_run_twice_at_once(env: Env, tmp_path: Path) -> None:
    """A second rotate-key on the same key file while one runs is refused, not interleaved."""
    data_dir = tmp_path / "data"
    keyring = load_keyring(None, data_dir)
    await _fill(env.store(keyring), 1)
    fd = os.open(data_dir / "master.key.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(CredentialError, match="another key rotation"):
            await env.store(keyring).rotate_key()
    finally:
        os.close(fd)
    assert len(read_key_file(data_dir / "master.key")) == 1


async def test_same_credential_for_two_variables_is_one_use(env: Env) -> None:
    """Two variables naming one credential get the same value; the use is recorded once."""
    store = env.store()
    plain = value()
    await store.put("tok", Secret(plain))
    got = await store.resolve({"A": "tok", "B": "tok"}, project="myapp", task_id="t")
    assert got["A"].reveal() == got["B"].reveal() == plain
    assert len(await store.uses(task_id="t")) == 1
    assert await store.resolve({}, project=None, task_id="t") == {}


async def test_env_dump_story(sqlite_env: Env) -> None:
    """What the end-to-end run will do: inject, let an agent print `env`, redact what leaves.

    The child environment carries the real values; every event, the result payload, an
    error message and a log line derived from the run show only ``[REDACTED:<name>]``.
    """
    store = sqlite_env.store()
    redactor = Redactor()
    anthropic, git = value("anthropic"), value("git")
    await store.put("anthropic-key", Secret(anthropic))
    await store.put("git-token", Secret(git))
    project = Project(
        name="myapp",
        repo_url="file:///x",
        credentials={"ANTHROPIC_API_KEY": "anthropic-key", "GIT_TOKEN": "git-token"},
    )
    injector = CredentialInjector(store, redactor)
    child_env = reveal_env(await injector.for_build(project, task_id="t-1"))
    env_output = "\n".join(f"{k}={v}" for k, v in {"PATH": "/bin", **child_env}.items())
    assert anthropic in env_output  # what the model server will see

    events = [
        AgentEvent(data=ToolResultData(id="1", output=env_output), provider="claude-code"),
        AgentEvent(
            data=AgentResult(status=RunStatus.SUCCEEDED, text=f"ANTHROPIC_API_KEY={anthropic}"),
            provider="claude-code",
        ),
    ]
    shown = [redact_event(e, redactor).to_dict() for e in events]
    payload = redact_payload({"result": {"output": f"token {git}"}}, redactor)
    message = redact_message(f"git push failed for https://x:{git}@host", redactor)
    everything = repr(shown) + repr(payload) + message
    assert anthropic not in everything
    assert git not in everything
    assert "ANTHROPIC_API_KEY=[REDACTED:anthropic-key]" in shown[0]["data"]["output"]
    assert "GIT_TOKEN=[REDACTED:git-token]" in shown[0]["data"]["output"]
    assert shown[1]["data"]["text"] == "ANTHROPIC_API_KEY=[REDACTED:anthropic-key]"
    assert payload == {"result": {"output": "token [REDACTED:git-token]"}}
