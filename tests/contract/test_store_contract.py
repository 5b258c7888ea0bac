"""The Store contract, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from forgeline.adapters.sql.database import Database
from forgeline.adapters.store import build_store
from forgeline.domain import AgentEvent, MessageData, Project
from forgeline.domain.errors import ProjectExistsError, ProjectNotFoundError, TokenNotFoundError
from forgeline.ports.store import Appended, Store


@pytest.fixture
def store(migrated_db: Database) -> Store:
    """A migrated, empty store of each dialect."""
    return build_store(migrated_db)


def _msg(text: str) -> AgentEvent:
    return AgentEvent(data=MessageData(role="assistant", text=text), provider="claude-code")


async def test_projects_round_trip(store: Store) -> None:
    """A created project reads back with every field; names are unique."""
    project = Project(
        name="myapp",
        repo_url="/srv/git/myapp.git",
        template="astro-landing",
        variables={"title": "Hi", "n": 3},
        credentials={"ANTHROPIC_API_KEY": "anthropic-key"},
        settings={"domain": "example.com"},
    )
    created = await store.create_project(project)
    assert created.name == "myapp"
    assert created.variables == {"title": "Hi", "n": 3}
    assert created.credentials == {"ANTHROPIC_API_KEY": "anthropic-key"}
    assert created.created_at is not None
    with pytest.raises(ProjectExistsError):
        await store.create_project(project)
    await store.create_project(Project(name="another", repo_url="/x"))
    assert [p.name for p in await store.list_projects()] == ["another", "myapp"]
    with pytest.raises(ProjectNotFoundError):
        await store.get_project("nope")


async def test_update_project(store: Store) -> None:
    """update_project replaces fields; updating a missing project is an error."""
    await store.create_project(Project(name="p1", repo_url="/a", state="creating"))
    from dataclasses import replace

    updated = await store.update_project(
        replace(await store.get_project("p1"), state="ready", settings={"k": "v"})
    )
    assert updated.state == "ready"
    assert updated.settings == {"k": "v"}
    assert updated.default_provider is None
    defaults = await store.update_project(
        replace(updated, default_provider="opencode", default_model="gpt-x")
    )
    assert (defaults.default_provider, defaults.default_model) == ("opencode", "gpt-x")
    with pytest.raises(ProjectNotFoundError):
        await store.update_project(Project(name="ghost", repo_url="/g"))


async def test_projects_page_by_name(store: Store) -> None:
    """list_projects pages by name after a cursor and keeps only the names asked for."""
    for name in ("d", "a", "c", "b"):
        await store.create_project(Project(name=name, repo_url=f"/{name}"))
    assert [p.name for p in await store.list_projects(limit=2)] == ["a", "b"]
    assert [p.name for p in await store.list_projects(after="b", limit=2)] == ["c", "d"]
    assert await store.list_projects(after="d") == []
    assert [p.name for p in await store.list_projects(names=["d", "b", "x"])] == ["b", "d"]
    assert await store.list_projects(names=[]) == []


async def test_delete_project_forgets_its_sessions(store: Store) -> None:
    """A deleted project is gone with the sessions recorded for it; others stay."""
    for name in ("gone", "kept"):
        await store.create_project(Project(name=name, repo_url=f"/{name}"))
        await store.record_session(name, "claude-code", f"s-{name}", "t1")
    await store.delete_project("gone")
    with pytest.raises(ProjectNotFoundError):
        await store.get_project("gone")
    with pytest.raises(ProjectNotFoundError):
        await store.delete_project("gone")
    assert await store.last_session("gone", "claude-code") is None
    assert await store.last_session("kept", "claude-code") == "s-kept"


async def test_last_session_is_the_newest_per_provider(store: Store) -> None:
    """record_session keeps one session per project and provider: the newest recorded."""
    assert await store.last_session("p", "claude-code") is None
    await store.record_session("p", "claude-code", "s1", "t1")
    await store.record_session("p", "opencode", "o1", "t2")
    await store.record_session("p", "claude-code", "s2", "t3")
    assert await store.last_session("p", "claude-code") == "s2"
    assert await store.last_session("p", "opencode") == "o1"


async def test_events_are_dense_per_task(store: Store) -> None:
    """Concurrent appends to one task get seq 1..n without gaps; tasks are independent."""
    results = await asyncio.gather(*(store.append_event("t1", _msg(str(i))) for i in range(20)))
    assert sorted(e.seq for e in results) == list(range(1, 21))
    other = await store.append_event("t2", _msg("x"))
    assert other.seq == 1
    assert other.task_id == "t2"
    stored = await store.list_events("t1")
    assert [e.seq for e in stored] == list(range(1, 21))
    assert stored[0].to_dict()["task_id"] == "t1"
    assert stored[0].event().data == results[[e.seq for e in results].index(1)].data
    tail = await store.list_events("t1", after_seq=18)
    assert [e.seq for e in tail] == [19, 20]
    assert [e.seq for e in await store.list_events("t1", after_seq=2, limit=3)] == [3, 4, 5]


async def test_watch_appends_tells_of_each_append_with_its_event(store: Store) -> None:
    """This process's appends are told at once, once committed, the event itself along;
    nothing more once the watch is closed."""
    told: list[Appended | None] = []
    watch = await store.watch_appends(told.append)
    numbered = await store.append_event("t9", _msg("hello"))
    mine = [w for w in told if w is not None and w.event is not None]
    assert [(w.task_id, w.seq) for w in mine] == [("t9", 1)]
    assert mine[0].event == (await store.list_events("t9"))[0]
    assert mine[0].event is not None
    assert mine[0].event.event().data == numbered.data
    watch.close()
    watch.close()
    await store.append_event("t9", _msg("again"))
    assert len([w for w in told if w is not None and w.event is not None]) == 1


async def test_tokens(store: Store) -> None:
    """Tokens are found by hash only, and marked used."""
    assert await store.count_tokens() == 0
    await store.add_token("id1", "admin", "hash-1", "admin")
    assert await store.count_tokens() == 1
    found = await store.find_token("hash-1")
    assert found is not None
    assert (found.name, found.role) == ("admin", "admin")
    assert found.last_used_at is not None
    assert await store.find_token("hash-2") is None


async def test_tokens_listed_scoped_and_revoked(store: Store) -> None:
    """Tokens list oldest first with their project scope; a revoked one is never found."""
    made = await store.add_token("id1", "admin", "hash-1", "admin")
    assert made.projects is None
    scoped = await store.add_token("id2", "bot", "hash-2", "builder", ["a", "b"])
    assert scoped.projects == ("a", "b")
    assert [(t.id, t.projects) for t in await store.list_tokens()] == [
        ("id1", None),
        ("id2", ("a", "b")),
    ]
    found = await store.find_token("hash-2")
    assert found is not None
    assert found.projects == ("a", "b")
    assert found.sees("a")
    assert not found.sees("c")
    await store.delete_token("id2")
    assert await store.find_token("hash-2") is None
    with pytest.raises(TokenNotFoundError):
        await store.delete_token("id2")
    assert [t.id for t in await store.list_tokens()] == ["id1"]
