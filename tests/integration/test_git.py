"""The git adapter against real git: bare repositories on disk, a smart-HTTP remote with
basic auth on 127.0.0.1, and an ssh transport whose ``ssh`` is a local stand-in."""

# ruff: noqa: ASYNC240, ASYNC221
# (The tests play the agent and the inspector with plain, blocking file and git calls on
# purpose: nothing else runs on the event loop meanwhile.)

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from forgeline.adapters.git import GitCli
from forgeline.domain.errors import GitError, PushRejectedError, ValidationError
from forgeline.domain.git import (
    TASK_TRAILER,
    GitAuthor,
    GitRemote,
    build_commit_message,
    embedded_repository,
    review_branch,
    task_trailers,
)
from forgeline.domain.secrets import Secret
from tests.support.git_http import GitHttpServer
from tests.support.local_run import LocalRun

BOT = GitAuthor("forgeline-bot", "bot@forgeline.test")
HUMAN_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LC_ALL": "C",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "Human",
    "GIT_AUTHOR_EMAIL": "human@example.test",
    "GIT_COMMITTER_NAME": "Human",
    "GIT_COMMITTER_EMAIL": "human@example.test",
}


def sh(*args: str, cwd: Path | str, env: dict[str, str] | None = None) -> str:
    """Run real git as a person would (for set-up and inspection); its stdout."""
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**HUMAN_ENV, "HOME": str(cwd), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"git {args} failed: {done.stderr}"
    return done.stdout.strip()


def seed(bare: Path, scratch: Path, files: dict[str, str], message: str = "seed") -> str:
    """Push one commit with ``files`` to ``bare``'s main (as another developer); its sha."""
    if not (scratch / ".git").exists():
        sh("clone", "--quiet", str(bare), str(scratch), cwd=bare.parent)
        sh("checkout", "--quiet", "-B", "main", cwd=scratch)
    for name, content in files.items():
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        (scratch / name).write_text(content)
    sh("add", "--all", cwd=scratch)
    sh("commit", "--quiet", "-m", message, cwd=scratch)
    sh("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=scratch)
    return sh("rev-parse", "HEAD", cwd=scratch)


@pytest.fixture
def run() -> LocalRun:
    """The stand-in workspace, recording every command."""
    return LocalRun()


@pytest.fixture
def git(run: LocalRun, tmp_path: Path) -> GitCli:
    """The adapter under test, with a HOME of its own."""
    home = tmp_path / "home"
    home.mkdir()
    return GitCli(run, home=str(home), timeout_s=30, network_timeout_s=60)


@pytest.fixture
async def bare(git: GitCli, tmp_path: Path) -> Path:
    """An empty embedded remote, made by the adapter."""
    path = embedded_repository(str(tmp_path / "git"), "demo")
    await git.init_bare(path)
    return Path(path)


@pytest.fixture
def workdir(tmp_path: Path) -> str:
    """Where the project's checkout cache lives (not created yet)."""
    return str(tmp_path / "checkouts" / "demo")


async def test_init_bare_names_main_and_is_idempotent(git: GitCli, bare: Path) -> None:
    """init_bare makes a bare repository whose HEAD is main; running it again is harmless."""
    await git.init_bare(str(bare))
    assert sh("rev-parse", "--is-bare-repository", cwd=bare) == "true"
    assert sh("symbolic-ref", "HEAD", cwd=bare) == "refs/heads/main"


async def test_initial_commit_is_empty_by_the_bot_and_idempotent(git: GitCli, bare: Path) -> None:
    """create_initial_commit writes one empty commit on main; a retry returns the same sha."""
    sha = await git.create_initial_commit(str(bare), author=BOT)
    assert sh("rev-parse", "refs/heads/main", cwd=bare) == sha
    assert sh("ls-tree", "-r", sha, cwd=bare) == ""
    assert sh("log", "-1", "--format=%an <%ae>|%s", sha, cwd=bare) == (
        "forgeline-bot <bot@forgeline.test>|Initial commit"
    )
    assert await git.create_initial_commit(str(bare), author=BOT) == sha


async def test_empty_remote_gives_an_empty_checkout_whose_first_push_creates_main(
    git: GitCli, bare: Path, workdir: str
) -> None:
    """A remote without commits clones to an unborn branch; commit + push create main."""
    remote = GitRemote(str(bare))
    checkout = await git.prepare_checkout("demo", remote, "main", workdir)
    assert checkout.empty
    assert checkout.head is None
    assert not await git.has_changes(workdir)
    Path(workdir, "index.html").write_text("<h1>soon</h1>\n")
    assert await git.has_changes(workdir)
    sha = await git.commit(workdir, "Add page", BOT, task_trailers("t-1"))
    assert sh("rev-list", "--parents", "-n1", sha, cwd=workdir) == sha  # a root commit
    pushed = await git.push(workdir, remote, "main")
    assert (pushed.ref, pushed.sha, pushed.outcome) == ("refs/heads/main", sha, "created")
    assert sh("rev-parse", "main", cwd=bare) == sha
    assert sh("show", "main:index.html", cwd=bare) == "<h1>soon</h1>"


async def test_clone_of_a_non_empty_remote(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """A remote with history clones to its branch's head with its files."""
    head = seed(bare, tmp_path / "dev", {"README.md": "hello\n", "src/app.py": "print(1)\n"})
    checkout = await git.prepare_checkout("demo", GitRemote(str(bare)), "main", workdir)
    assert checkout.head == head
    assert not checkout.empty
    assert Path(workdir, "src/app.py").read_text() == "print(1)\n"
    assert sh("rev-parse", "HEAD", cwd=workdir) == head
    assert sh("symbolic-ref", "HEAD", cwd=workdir) == "refs/heads/main"
    assert not await git.has_changes(workdir)


async def test_cached_checkout_follows_the_remote_and_drops_local_junk(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """A reused checkout is reset to the moved remote: local commits, edits, untracked and
    ignored files, a stale index.lock and planted git config are all gone."""
    dev = tmp_path / "dev"
    seed(bare, dev, {"a.txt": "1\n", ".gitignore": "node_modules/\n"})
    remote = GitRemote(str(bare))
    await git.prepare_checkout("demo", remote, "main", workdir)
    # The last build (or its agent) left a mess behind …
    wd = Path(workdir)
    (wd / "a.txt").write_text("edited\n")
    (wd / "junk.txt").write_text("junk\n")
    (wd / "node_modules").mkdir()
    (wd / "node_modules" / "dep.js").write_text("x\n")
    sh("add", "junk.txt", cwd=wd)
    sh("commit", "--quiet", "-m", "local only", cwd=wd)
    (wd / "loose.txt").write_text("untracked\n")
    sh("config", "url./nonexistent/.insteadOf", str(bare), cwd=wd)
    sh("config", "core.hooksPath", str(tmp_path), cwd=wd)
    (wd / ".git" / "index.lock").write_text("")
    # … and someone pushed meanwhile.
    moved = seed(bare, dev, {"b.txt": "2\n"}, message="moved")

    checkout = await git.prepare_checkout("demo", remote, "main", workdir)

    assert checkout.head == moved
    assert sh("rev-parse", "HEAD", cwd=wd) == moved
    assert sorted(p.name for p in wd.iterdir()) == [".git", ".gitignore", "a.txt", "b.txt"]
    assert (wd / "a.txt").read_text() == "1\n"
    assert sh("status", "--porcelain", "--ignored", cwd=wd) == ""
    assert "insteadof" not in sh("config", "--local", "--list", cwd=wd).lower()
    assert not await git.has_changes(workdir)


async def test_remote_that_lost_its_branch_gives_an_empty_checkout_again(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """If the branch disappears from the remote, the cached checkout becomes empty too."""
    seed(bare, tmp_path / "dev", {"a.txt": "1\n"})
    remote = GitRemote(str(bare))
    await git.prepare_checkout("demo", remote, "main", workdir)
    sh("update-ref", "-d", "refs/heads/main", cwd=bare)
    checkout = await git.prepare_checkout("demo", remote, "main", workdir)
    assert checkout.empty
    assert [p.name for p in Path(workdir).iterdir()] == [".git"]
    assert not await git.has_changes(workdir)


async def test_broken_cache_is_wiped_and_cloned_afresh(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """A checkout git cannot use any more (corrupt HEAD) is replaced by a fresh clone."""
    head = seed(bare, tmp_path / "dev", {"a.txt": "1\n"})
    await git.prepare_checkout("demo", GitRemote(str(bare)), "main", workdir)
    Path(workdir, ".git", "HEAD").write_text("garbage\n")
    Path(workdir, "stray.txt").write_text("x\n")
    checkout = await git.prepare_checkout("demo", GitRemote(str(bare)), "main", workdir)
    assert checkout.head == head
    assert sorted(p.name for p in Path(workdir).iterdir()) == [".git", "a.txt"]


async def test_cache_with_corrupt_objects_is_recloned(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """A cache whose object files were truncated (a full disk, a crash) cannot even fetch;
    it is wiped and cloned again instead of failing every later build."""
    dev = tmp_path / "dev"
    seed(bare, dev, {"a.txt": "1\n"})
    await git.prepare_checkout("demo", GitRemote(str(bare)), "main", workdir)
    for obj in Path(workdir, ".git", "objects").glob("??/*"):
        obj.chmod(0o644)
        obj.write_bytes(b"")
    moved = seed(bare, dev, {"b.txt": "2\n"})
    checkout = await git.prepare_checkout("demo", GitRemote(str(bare)), "main", workdir)
    assert checkout.head == moved
    assert Path(workdir, "b.txt").read_text() == "2\n"


async def test_commit_has_bot_author_summary_body_and_trailer(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """The build commit is by the bot, starts with the prompt's summary, carries the whole
    prompt and a Forgeline-Task trailer that git itself parses."""
    base = seed(bare, tmp_path / "dev", {"a.txt": "1\n"})
    await git.prepare_checkout("demo", GitRemote(str(bare)), "main", workdir)
    Path(workdir, "page.html").write_text("<p>dark</p>\n")
    Path(workdir, "a.txt").unlink()
    prompt = (
        "Create a coming soon page with a dark theme, a countdown and a signup form "
        "for the newsletter.\n\n# Details\n- use the brand colours\n"
    )
    sha = await git.commit(workdir, build_commit_message(prompt), BOT, task_trailers("t-42"))
    assert sh("log", "-1", "--format=%an <%ae>|%cn <%ce>", sha, cwd=workdir) == (
        "forgeline-bot <bot@forgeline.test>|forgeline-bot <bot@forgeline.test>"
    )
    subject = sh("log", "-1", "--format=%s", sha, cwd=workdir)
    assert len(subject) <= 72
    assert subject.startswith("Create a coming soon page with a dark theme")
    body = sh("log", "-1", "--format=%B", sha, cwd=workdir)
    assert "# Details\n- use the brand colours" in body  # markdown headings survive
    trailer = f"%(trailers:key={TASK_TRAILER},valueonly)"
    assert sh("log", "-1", f"--format={trailer}", sha, cwd=workdir) == "t-42"
    assert sh("rev-parse", f"{sha}^", cwd=workdir) == base
    assert sh("diff", "--name-status", base, sha, cwd=workdir).split("\n") == [
        "D\ta.txt",
        "A\tpage.html",
    ]
    assert sh("rev-parse", "HEAD", cwd=workdir) == sha
    assert sh("status", "--porcelain", cwd=workdir) == ""


async def test_agent_commits_are_folded_into_one_build_commit(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """Commits the agent made itself count as changes and end up in the one build commit,
    whose parent is the prepared base."""
    base = seed(bare, tmp_path / "dev", {"a.txt": "1\n"})
    await git.prepare_checkout("demo", GitRemote(str(bare)), "main", workdir)
    Path(workdir, "b.txt").write_text("agent\n")
    sh("add", "b.txt", cwd=workdir)
    sh("commit", "--quiet", "-m", "agent's own commit", cwd=workdir)
    sh("checkout", "--quiet", "--detach", cwd=workdir)  # and even detached HEAD
    assert await git.has_changes(workdir)
    sha = await git.commit(workdir, "Build", BOT, task_trailers("t-7"))
    assert sh("rev-list", "--count", f"{base}..{sha}", cwd=workdir) == "1"
    assert sh("show", f"{sha}:b.txt", cwd=workdir) == "agent"


async def test_no_change_is_detected_and_commit_refuses(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """Ignored files and an agent's commit-then-revert are no change; commit says so, unless
    allow_empty."""
    seed(bare, tmp_path / "dev", {".gitignore": "dist/\n"})
    await git.prepare_checkout("demo", GitRemote(str(bare)), "main", workdir)
    Path(workdir, "dist").mkdir()
    Path(workdir, "dist", "out.js").write_text("built\n")
    Path(workdir, "empty", "dirs").mkdir(parents=True)  # git does not track directories
    assert not await git.has_changes(workdir)
    Path(workdir, "tmp.txt").write_text("x\n")
    sh("add", "tmp.txt", cwd=workdir)
    sh("commit", "--quiet", "-m", "add", cwd=workdir)
    sh("rm", "--quiet", "tmp.txt", cwd=workdir)
    sh("commit", "--quiet", "-m", "revert", cwd=workdir)
    assert not await git.has_changes(workdir)
    with pytest.raises(GitError, match="nothing to commit"):
        await git.commit(workdir, "Nothing", BOT)
    sha = await git.commit(workdir, "Empty on purpose", BOT, allow_empty=True)
    assert sh("rev-parse", f"{sha}^{{tree}}", cwd=workdir) == sh(
        "rev-parse", "HEAD~0^{tree}", cwd=workdir
    )


async def test_a_file_deep_in_a_new_directory_is_a_change(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """New directories count by their files, however deep, and are committed whole."""
    seed(bare, tmp_path / "dev", {"a.txt": "1\n"})
    await git.prepare_checkout("demo", GitRemote(str(bare)), "main", workdir)
    Path(workdir, "src", "pages", "blog").mkdir(parents=True)
    Path(workdir, "src", "pages", "blog", "index.astro").write_text("---\n---\n")
    assert await git.has_changes(workdir)
    sha = await git.commit(workdir, "Blog", BOT)
    assert sh("ls-tree", "-r", "--name-only", sha, cwd=workdir).split("\n") == [
        "a.txt",
        "src/pages/blog/index.astro",
    ]


async def test_push_to_a_review_branch_leaves_main_alone(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """Without auto_deploy the commit goes to forgeline/<task id>; a retried task may
    replace its own review branch with force."""
    base = seed(bare, tmp_path / "dev", {"a.txt": "1\n"})
    remote = GitRemote(str(bare))
    branch = review_branch("3f2a9c1e-7b7d-4e0b-9d8e-1c2b3a4d5e6f")
    await git.prepare_checkout("demo", remote, "main", workdir)
    Path(workdir, "a.txt").write_text("2\n")
    first = await git.commit(workdir, "Try one", BOT)
    pushed = await git.push(workdir, remote, branch)
    assert pushed.outcome == "created"
    assert sh("rev-parse", f"refs/heads/{branch}", cwd=bare) == first
    assert sh("rev-parse", "refs/heads/main", cwd=bare) == base

    await git.prepare_checkout("demo", remote, "main", workdir)  # the retry starts over
    Path(workdir, "a.txt").write_text("3\n")
    second = await git.commit(workdir, "Try two", BOT)
    with pytest.raises(PushRejectedError):
        await git.push(workdir, remote, branch)
    forced = await git.push(workdir, remote, branch, force=True)
    assert (forced.sha, forced.outcome) == (second, "forced")


async def test_push_fast_forwards_main(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """With auto_deploy the commit fast-forwards the default branch."""
    seed(bare, tmp_path / "dev", {"a.txt": "1\n"})
    remote = GitRemote(str(bare))
    await git.prepare_checkout("demo", remote, "main", workdir)
    Path(workdir, "a.txt").write_text("2\n")
    sha = await git.commit(workdir, "Change", BOT)
    pushed = await git.push(workdir, remote, "main")
    assert (pushed.sha, pushed.outcome) == (sha, "fast-forward")
    assert sh("rev-parse", "main", cwd=bare) == sha


async def test_push_behind_the_remote_is_rejected_with_the_reason(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """If main moved after the checkout, the push is refused (not forced) and says why."""
    dev = tmp_path / "dev"
    seed(bare, dev, {"a.txt": "1\n"})
    remote = GitRemote(str(bare))
    await git.prepare_checkout("demo", remote, "main", workdir)
    moved = seed(bare, dev, {"b.txt": "2\n"})
    Path(workdir, "a.txt").write_text("mine\n")
    await git.commit(workdir, "Mine", BOT)
    with pytest.raises(PushRejectedError) as caught:
        await git.push(workdir, remote, "main")
    assert caught.value.ref == "refs/heads/main"
    assert caught.value.reason in {"fetch first", "non-fast-forward"}
    assert "rejected" in str(caught.value)
    assert sh("rev-parse", "main", cwd=bare) == moved


async def test_push_declined_by_a_pre_receive_hook_carries_its_message(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """A remote hook's refusal becomes PushRejectedError with git's reason and the hook's
    own words."""
    seed(bare, tmp_path / "dev", {"a.txt": "1\n"})
    hook = bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'deploys are frozen until Monday' >&2\nexit 1\n")
    hook.chmod(0o755)
    remote = GitRemote(str(bare))
    await git.prepare_checkout("demo", remote, "main", workdir)
    Path(workdir, "a.txt").write_text("2\n")
    await git.commit(workdir, "Change", BOT)
    with pytest.raises(PushRejectedError) as caught:
        await git.push(workdir, remote, "main")
    assert caught.value.reason.startswith("pre-receive hook declined")
    assert "deploys are frozen until Monday" in caught.value.reason


async def test_hooks_and_config_planted_by_an_agent_never_run(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """Hooks in .git/hooks, a clean filter and an insteadOf rewrite written during the
    build never run or apply in has_changes, commit and push."""
    seed(bare, tmp_path / "dev", {"a.txt": "1\n"})
    remote = GitRemote(str(bare))
    await git.prepare_checkout("demo", remote, "main", workdir)
    marker = tmp_path / "hook-ran"
    for name in ("pre-commit", "commit-msg", "post-commit", "pre-push"):
        hook = Path(workdir, ".git", "hooks", name)
        hook.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
        hook.chmod(0o755)
    evil = tmp_path / "evil.git"
    sh("init", "--quiet", "--bare", str(evil), cwd=tmp_path)
    sh("config", f"url.{evil}.insteadOf", str(bare), cwd=Path(workdir))
    # A clean filter is a command git runs on every modified file it looks at.
    sh("config", "filter.evil.clean", f"sh -c 'touch {marker}; cat'", cwd=Path(workdir))
    Path(workdir, ".gitattributes").write_text("*.txt filter=evil\n")
    Path(workdir, "a.txt").write_text("2\n")
    assert await git.has_changes(workdir)
    sha = await git.commit(workdir, "Change", BOT)
    await git.push(workdir, remote, "main")
    assert not marker.exists()
    assert sh("rev-parse", "main", cwd=bare) == sha
    assert sh("for-each-ref", cwd=evil) == ""


async def test_operator_global_config_has_no_effect(
    run: LocalRun, bare: Path, tmp_path: Path
) -> None:
    """A hostile ~/.gitconfig (signing required, a rewrite of the remote) and a personal
    ignore file change nothing."""
    home = tmp_path / "operator"
    home.mkdir()
    (home / ".gitconfig").write_text(
        f'[commit]\n\tgpgSign = true\n[url "/nonexistent/"]\n\tinsteadOf = {bare}\n'
        "[user]\n\tname = Operator\n"
    )
    (home / ".config" / "git").mkdir(parents=True)
    (home / ".config" / "git" / "ignore").write_text("*.txt\n")
    git = GitCli(run, home=str(home), timeout_s=30)
    workdir = str(tmp_path / "checkouts" / "demo")
    await git.prepare_checkout("demo", GitRemote(str(bare)), "main", workdir)
    Path(workdir, "a.txt").write_text("1\n")
    sha = await git.commit(workdir, "Change", BOT)
    await git.push(workdir, GitRemote(str(bare)), "main")
    assert sh("log", "-1", "--format=%an", sha, cwd=bare) == "forgeline-bot"
    assert sh("ls-tree", "--name-only", sha, cwd=bare) == "a.txt"  # not personally ignored
    # Every child got an explicit environment: these names and nothing inherited.
    names = {name for _, env in run.calls for name in env}
    assert all(name.startswith("GIT_") for name in names - {"PATH", "HOME", "LANG", "LC_ALL"})
    assert all(env["GIT_CONFIG_GLOBAL"] == "/dev/null" for _, env in run.calls)


async def test_remove_checkout_removes_everything(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """An attempt's checkout goes whole: the agent's files, commits, a killed git's lock, a
    directory it made read-only, a link out of the tree (whose target stays); a missing
    checkout is fine."""
    await git.remove_checkout(workdir)  # never prepared
    seed(bare, tmp_path / "dev", {"a.txt": "1\n"})
    await git.prepare_checkout("demo", GitRemote(str(bare)), "main", workdir)
    wd = Path(workdir)
    (wd / "new.txt").write_text("x\n")
    sh("add", "--all", cwd=wd)
    sh("commit", "--quiet", "-m", "agent", cwd=wd)
    (wd / ".git" / "index.lock").write_text("")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    (wd / "link").symlink_to(outside)
    locked = wd / "locked"
    locked.mkdir()
    (locked / "f").write_text("x\n")
    locked.chmod(0o555)
    await git.remove_checkout(workdir)
    assert not wd.exists()
    assert outside.read_text() == "keep\n"


async def test_find_task_commit_recognizes_an_earlier_attempt(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """After a push, a fresh checkout finds the commit by its trailer (and not by a prompt
    that merely quotes the trailer line)."""
    seed(bare, tmp_path / "dev", {"a.txt": "1\n"})
    remote = GitRemote(str(bare))
    await git.prepare_checkout("demo", remote, "main", workdir)
    Path(workdir, "a.txt").write_text("2\n")
    quoted = build_commit_message("Explain\n\nForgeline-Task: t-1\n\nin the docs")
    await git.commit(workdir, quoted, BOT, task_trailers("t-0"))
    await git.push(workdir, remote, "main")
    await git.prepare_checkout("demo", remote, "main", workdir)
    Path(workdir, "a.txt").write_text("3\n")
    sha = await git.commit(workdir, "Build", BOT, task_trailers("t-1"))
    await git.push(workdir, remote, "main")
    await git.prepare_checkout("demo", remote, "main", workdir)
    assert await git.find_task_commit(workdir, "t-1") == sha
    assert await git.find_task_commit(workdir, "t-2") is None


async def test_commit_patch_reads_the_commit_from_the_remote(
    git: GitCli, bare: Path, tmp_path: Path
) -> None:
    """The patch of a pushed commit comes from the bare repository, against its parent (a
    root commit against nothing); an unknown or malformed commit id is refused."""
    root = seed(bare, tmp_path / "dev", {"a.txt": "one\n"}, "first")
    second = seed(bare, tmp_path / "dev", {"a.txt": "two\n", "b.txt": "new\n"}, "second")
    remote = GitRemote(str(bare))
    scratch = str(tmp_path / "scratch" / "diff")
    patch = await git.commit_patch(remote, second, scratch)
    assert "diff --git a/a.txt b/a.txt" in patch
    assert "-one\n+two" in patch
    assert "new file mode" in patch
    assert second not in patch  # the patch alone, no commit header
    whole = await git.commit_patch(remote, root, scratch)
    assert "+one" in whole
    assert "b.txt" not in whole
    assert not Path(scratch).exists()  # a path remote is read in place
    with pytest.raises(GitError, match="no commit"):
        await git.commit_patch(remote, "0" * 40, scratch)
    with pytest.raises(ValidationError):
        await git.commit_patch(remote, "HEAD", scratch)


async def test_bad_paths_and_branches_are_refused_before_running_git(
    git: GitCli, run: LocalRun, bare: Path
) -> None:
    """Relative or shallow checkout paths and option-like branch names never reach git."""
    remote = GitRemote(str(bare))
    before = len(run.calls)
    for workdir in ("checkouts/demo", "/", "/tmp", "/a/../etc/x"):
        with pytest.raises(ValidationError):
            await git.prepare_checkout("demo", remote, "main", workdir)
    for branch in ("-f", "a..b", "main.lock", "has space"):
        with pytest.raises(ValidationError):
            await git.prepare_checkout("demo", remote, branch, "/srv/checkouts/demo")
    assert len(run.calls) == before


# --- https with a token ------------------------------------------------------------------

TOKEN = "glpat-Sup3rSecretTok3n-do-not-leak"


@pytest.fixture
def http_root(tmp_path: Path) -> Path:
    """Where the smart-HTTP server finds its repositories."""
    root = tmp_path / "served"
    root.mkdir()
    return root


@pytest.fixture
def server(http_root: Path) -> Iterator[GitHttpServer]:
    """A git smart-HTTP remote that lets in ``bot:TOKEN`` only."""
    with GitHttpServer(http_root, username="bot", token=TOKEN) as srv:
        yield srv


async def test_https_token_push_works_and_the_token_shows_nowhere(
    run: LocalRun, server: GitHttpServer, http_root: Path, tmp_path: Path
) -> None:
    """Fetch and push authenticate with the token, which is in no argv (ours, git's or its
    helpers', read from /proc during the requests), no URL, no trace and no log line."""
    trace = tmp_path / "git-trace.log"
    home = tmp_path / "home"
    home.mkdir()
    git = GitCli(run, home=str(home), timeout_s=30, extra_env={"GIT_TRACE": str(trace)})
    await git.init_bare(str(http_root / "site.git"))
    remote = GitRemote(server.url("site.git"), token=Secret(TOKEN, "git-token"), username="bot")
    workdir = str(tmp_path / "checkouts" / "site")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(0))
    try:
        with capture_logs() as logs:
            checkout = await git.prepare_checkout("site", remote, "main", workdir)
            assert checkout.empty
            Path(workdir, "index.html").write_text("hi\n")
            sha = await git.commit(workdir, "Add page", BOT, task_trailers("t-9"))
            await git.push(workdir, remote, "main")
            Path(workdir, "index.html").write_text("hi again\n")
            await git.commit(workdir, "Edit page", BOT)
            await git.push(workdir, remote, review_branch("t-9"))
            again = await git.prepare_checkout("site", remote, "main", workdir)
    finally:
        structlog.reset_defaults()

    assert again.head == sha
    assert sh("rev-parse", "main", cwd=http_root / "site.git") == sha
    authorized = [r for r in server.requests if r[2]]
    assert any("git-receive-pack" in path for _, path, _ in authorized)
    # The snapshots did catch git talking to us, so their silence about the token means it.
    assert any("git-remote-http" in line for snap in server.cmdline_snapshots for line in snap)
    assert not any(TOKEN in line for snap in server.cmdline_snapshots for line in snap)
    assert not any(TOKEN in " ".join(argv) for argv, _ in run.calls)
    # The environment is its one way in: one variable, and only for fetch and push.
    with_token = [(argv, env) for argv, env in run.calls if TOKEN in "".join(env.values())]
    assert {name for _, env in with_token for name, v in env.items() if TOKEN in v} == {
        "FORGELINE_GIT_TOKEN"
    }
    assert {next(a for a in ("fetch", "push") if a in argv) for argv, _ in with_token} == {
        "fetch",
        "push",
    }
    assert TOKEN not in trace.read_text()
    assert "; f get" in trace.read_text()  # the helper did run, traced without its answer
    assert logs
    assert TOKEN not in repr(logs)
    assert TOKEN not in sh("config", "--local", "--list", cwd=Path(workdir))
    assert TOKEN not in Path(workdir, ".git", "config").read_text()


async def test_commit_patch_fetches_only_that_commit_over_https(
    git: GitCli, server: GitHttpServer, http_root: Path, tmp_path: Path
) -> None:
    """From a forge remote the commit is fetched (with the token) into a scratch repository
    that is gone afterwards; older history is not needed."""
    bare = http_root / "site.git"
    await git.init_bare(str(bare))
    seed(bare, tmp_path / "dev", {"a.txt": "one\n"}, "first")
    seed(bare, tmp_path / "dev", {"a.txt": "two\n"}, "second")
    third = seed(bare, tmp_path / "dev", {"a.txt": "three\n"}, "third")
    remote = GitRemote(server.url("site.git"), token=Secret(TOKEN, "git-token"), username="bot")
    scratch = tmp_path / "scratch" / "diff"
    patch = await git.commit_patch(remote, third, str(scratch))
    assert "-two\n+three" in patch
    assert not scratch.exists()


async def test_https_wrong_token_fails_clearly_without_the_token(
    git: GitCli, server: GitHttpServer, http_root: Path, workdir: str
) -> None:
    """A wrong token is an authentication error that names the remote, not the token."""
    await git.init_bare(str(http_root / "site.git"))
    wrong = "wrong-" + TOKEN[::-1]
    remote = GitRemote(server.url("site.git"), token=Secret(wrong, "git-token"), username="bot")
    with pytest.raises(GitError) as caught:
        await git.prepare_checkout("site", remote, "main", workdir)
    text = str(caught.value)
    assert "Authentication failed" in text
    assert server.url("site.git") in text
    chain = [caught.value, caught.value.__cause__, caught.value.__context__]
    assert not any(wrong in repr(e) or TOKEN in repr(e) for e in chain if e is not None)
    assert not any(authorized for _, _, authorized in server.requests)


async def test_token_is_not_offered_to_a_host_the_remote_redirects_to(
    git: GitCli, server: GitHttpServer, http_root: Path, tmp_path: Path, workdir: str
) -> None:
    """A remote that redirects elsewhere (a compromised forge, a phishing proxy) never
    gets our token forwarded to the other host: the credential is bound to the remote."""
    await git.init_bare(str(http_root / "site.git"))
    # The token's own host is 127.0.0.1; the redirecting server is reached as localhost,
    # and it sends git on to 127.0.0.1 — a different host for git's credential matching.
    (tmp_path / "empty").mkdir()
    with GitHttpServer(
        tmp_path / "empty", username="x", token="y", redirect_to=f"http://127.0.0.1:{server.port}"
    ) as redirector:
        remote = GitRemote(
            f"http://localhost:{redirector.port}/site.git", Secret(TOKEN), username="bot"
        )
        with pytest.raises(GitError):
            await git.prepare_checkout("site", remote, "main", workdir)
    assert redirector.authorization_headers  # git did come to the redirector first …
    assert server.requests  # … and followed the redirect …
    assert not any(server.authorization_headers)  # … without any credentials.


async def test_https_without_token_fails_at_once_instead_of_prompting(
    git: GitCli, server: GitHttpServer, http_root: Path, workdir: str
) -> None:
    """No token and no terminal: git reports the missing credentials instead of waiting."""
    await git.init_bare(str(http_root / "site.git"))
    with pytest.raises(GitError, match=r"terminal prompts disabled|Authentication failed"):
        await git.prepare_checkout("site", GitRemote(server.url("site.git")), "main", workdir)


# --- ssh ---------------------------------------------------------------------------------

FAKE_SSH = """#!/bin/sh
# Stands in for ssh: records its arguments, then runs the remote command locally, which is
# exactly what sshd would do on the far side.
printf '%s\\n' "$*" >> "{log}"
unset GIT_DIR GIT_WORK_TREE
{delay}
for last; do :; done
exec sh -c "$last"
"""


def fake_ssh_path(tmp_path: Path, *, delay: str = "") -> tuple[str, Path]:
    """A PATH whose ``ssh`` is the stand-in; and the file it logs its argv to."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / "ssh-argv.log"
    ssh = bindir / "ssh"
    ssh.write_text(FAKE_SSH.format(log=log, delay=delay))
    ssh.chmod(0o755)
    return f"{bindir}:/usr/local/bin:/usr/bin:/bin", log


async def test_ssh_remote_passes_through_with_batch_mode(
    run: LocalRun, bare: Path, tmp_path: Path
) -> None:
    """ssh:// remotes go through ssh with BatchMode and accept-new host keys, both ways."""
    path, log = fake_ssh_path(tmp_path)
    git = GitCli(run, path=path, home=str(tmp_path), timeout_s=30)
    remote = GitRemote(f"ssh://git@forge.example:2222{bare}")
    workdir = str(tmp_path / "checkouts" / "demo")
    await git.prepare_checkout("demo", remote, "main", workdir)
    Path(workdir, "a.txt").write_text("over ssh\n")
    sha = await git.commit(workdir, "Via ssh", BOT)
    await git.push(workdir, remote, "main")
    assert sh("rev-parse", "main", cwd=bare) == sha
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    for line in calls:
        assert "-o BatchMode=yes" in line
        assert "-o StrictHostKeyChecking=accept-new" in line
        assert "-p 2222" in line
        assert "git@forge.example" in line


async def test_a_hanging_remote_times_out_and_leaves_no_process(
    run: LocalRun, bare: Path, tmp_path: Path
) -> None:
    """A remote that never answers ends in GitError after the network timeout, and the
    killed git leaves no ssh behind."""
    path, _ = fake_ssh_path(tmp_path, delay="exec sleep 299.77")
    git = GitCli(run, path=path, home=str(tmp_path), timeout_s=30, network_timeout_s=1.5)
    remote = GitRemote(f"ssh://git@forge.example{bare}")
    with pytest.raises(GitError, match="timed out"):
        await git.prepare_checkout("demo", remote, "main", str(tmp_path / "co" / "demo"))
    leftovers = subprocess.run(
        ["pgrep", "-f", "sleep 299.77"], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in leftovers:  # clean up before failing, so one bad run leaves nothing behind
        os.kill(int(pid), signal.SIGKILL)
    assert leftovers == []


async def test_cancelling_a_hanging_fetch_leaves_no_process(
    run: LocalRun, bare: Path, tmp_path: Path
) -> None:
    """Cancelling the caller mid-fetch (a build cancelled by its user) kills git and its
    transport at once."""
    # The stand-in ssh tells us (SIGUSR1) that git is mid-fetch, then hangs.
    path, _ = fake_ssh_path(tmp_path, delay=f"kill -USR1 {os.getpid()}; exec sleep 298.55")
    git = GitCli(run, path=path, home=str(tmp_path), timeout_s=30, network_timeout_s=60)
    remote = GitRemote(f"ssh://git@forge.example{bare}")
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, started.set)
    try:
        task = asyncio.create_task(
            git.prepare_checkout("demo", remote, "main", str(tmp_path / "co" / "demo")),
            name="prepare-checkout-under-test",
        )
        async with asyncio.timeout(30):
            await started.wait()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    leftovers = subprocess.run(
        ["pgrep", "-f", "sleep 298.55"], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in leftovers:
        os.kill(int(pid), signal.SIGKILL)
    assert leftovers == []


async def test_a_deleted_dot_git_fails_instead_of_using_an_enclosing_repository(
    git: GitCli, bare: Path, tmp_path: Path
) -> None:
    """If the agent removes .git, has_changes and commit fail; they never fall back to a
    repository above the checkout."""
    outer = tmp_path / "outer"
    outer.mkdir()
    sh("init", "--quiet", cwd=outer)
    workdir = str(outer / "checkouts" / "demo")
    await git.prepare_checkout("demo", GitRemote(str(bare)), "main", workdir)
    shutil.rmtree(Path(workdir, ".git"))
    Path(workdir, "a.txt").write_text("x\n")
    with pytest.raises(GitError):
        await git.has_changes(workdir)
    with pytest.raises(GitError):
        await git.commit(workdir, "Change", BOT)
    assert sh("status", "--porcelain", cwd=outer) == "?? checkouts/"
    assert (
        subprocess.run(
            ["git", "rev-parse", "--verify", "HEAD"], cwd=outer, capture_output=True, check=False
        ).returncode
        != 0
    )


async def test_agent_excludes_do_not_hide_files_from_later_builds(
    git: GitCli, bare: Path, workdir: str, tmp_path: Path
) -> None:
    """A .git/info/exclude written in one build is gone when the cache is reused."""
    seed(bare, tmp_path / "dev", {"a.txt": "1\n"})
    remote = GitRemote(str(bare))
    await git.prepare_checkout("demo", remote, "main", workdir)
    Path(workdir, ".git", "info", "exclude").write_text("*.html\n")
    await git.prepare_checkout("demo", remote, "main", workdir)
    Path(workdir, "page.html").write_text("<p/>\n")
    assert await git.has_changes(workdir)
    sha = await git.commit(workdir, "Page", BOT)
    assert "page.html" in sh("ls-tree", "--name-only", sha, cwd=workdir)


async def test_unreachable_remote_is_a_clear_git_error(git: GitCli, tmp_path: Path) -> None:
    """A remote that does not exist fails the checkout with git's explanation."""
    remote = GitRemote(str(tmp_path / "missing.git"))
    with pytest.raises(GitError) as caught:
        await git.prepare_checkout("demo", remote, "main", str(tmp_path / "co" / "demo"))
    assert not isinstance(caught.value, PushRejectedError)
    assert "does not appear to be a git repository" in str(caught.value)
    assert str(tmp_path / "missing.git") in str(caught.value)
