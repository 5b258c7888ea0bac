"""Parsing git's machine output: push porcelain lines, remote messages, error excerpts."""

from __future__ import annotations

from forgeline.adapters.git.output import (
    EXCERPT_CHARS,
    EXCERPT_LINES,
    excerpt,
    parse_push_porcelain,
    remote_messages,
    split_nul,
)


def test_accepted_push_lines() -> None:
    """Each flag of `git push --porcelain` maps to its outcome; framing lines are skipped."""
    out = (
        "To /srv/git/demo.git\n"
        "*\tabc:refs/heads/forgeline/t-1\t[new branch]\n"
        " \tabc:refs/heads/main\t1a2b3c..4d5e6f\n"
        "+\tabc:refs/heads/review\t1a2b3c...4d5e6f (forced update)\n"
        "=\tabc:refs/heads/same\t[up to date]\n"
        "Done\n"
    )
    refs = parse_push_porcelain(out)
    assert [(r.destination, r.outcome, r.rejected) for r in refs] == [
        ("refs/heads/forgeline/t-1", "created", False),
        ("refs/heads/main", "fast-forward", False),
        ("refs/heads/review", "forced", False),
        ("refs/heads/same", "up-to-date", False),
    ]


def test_rejected_push_lines_give_git_reason() -> None:
    """A `!` line is a rejection; its reason is git's parenthesized explanation."""
    out = (
        "To http://127.0.0.1:1234/demo.git\n"
        "!\tHEAD:refs/heads/main\t[rejected] (fetch first)\n"
        "!\tHEAD:refs/heads/a\t[remote rejected] (pre-receive hook declined)\n"
        "!\tHEAD:refs/heads/b\t[rejected] (non-fast-forward)\n"
        "!\tHEAD:refs/heads/c\t[remote failure]\n"
        "Done\n"
    )
    refs = parse_push_porcelain(out)
    assert all(r.rejected and r.outcome is None for r in refs)
    assert [r.reason for r in refs] == [
        "fetch first",
        "pre-receive hook declined",
        "non-fast-forward",
        "remote failure",
    ]


def test_remote_messages_are_the_remote_lines_only() -> None:
    """Hook output arrives as `remote:` lines; blank ones and git's own lines are dropped."""
    stderr = "remote: \nremote: deploys are frozen\nTo /x.git\nerror: failed to push\n"
    assert remote_messages(stderr) == ["deploys are frozen"]


def test_excerpt_masks_secrets_and_keeps_the_tail_bounded() -> None:
    """Secrets are masked; only the last lines, at most EXCERPT_CHARS, are kept."""
    text = "\n".join(f"line {i} tok3n-value" for i in range(100))
    cut = excerpt(text, ["tok3n-value"])
    assert "tok3n-value" not in cut
    assert cut.count("\n") == EXCERPT_LINES - 1
    assert cut.endswith("line 99 [REDACTED]")
    assert len(excerpt("x" * 10_000)) == EXCERPT_CHARS + 1
    assert excerpt("plain", [""]) == "plain"


def test_split_nul() -> None:
    """NUL-terminated listings split into their items, without an empty tail."""
    assert split_nul("a\0b c\0") == ["a", "b c"]
    assert split_nul("") == []
