"""The pure git rules: commit messages, trailers, branch names, remote URLs."""

from __future__ import annotations

import pytest

from forgeline.domain.errors import ValidationError
from forgeline.domain.git import (
    SUBJECT_MAX,
    TASK_TRAILER,
    GitAuthor,
    GitRemote,
    RemoteKind,
    accepts_token,
    build_commit_message,
    classify_remote,
    commit_subject,
    embedded_repository,
    format_trailers,
    review_branch,
    task_trailers,
    validate_branch_name,
    with_trailers,
    wrap_prompt,
)
from forgeline.domain.secrets import Secret

LONG = (
    "Create a coming soon page with a dark theme, a countdown and a signup form "
    "for the newsletter, then deploy it"
)


def test_short_prompt_is_the_whole_message() -> None:
    """A one-line prompt that fits becomes the subject, without a repeated body."""
    assert build_commit_message("Add a dark theme") == "Add a dark theme"


def test_long_first_line_is_cut_at_a_word_with_an_ellipsis() -> None:
    """The subject never exceeds 72 characters and ends on a whole word plus '…'."""
    subject = commit_subject(LONG)
    assert len(subject) <= SUBJECT_MAX
    assert subject == "Create a coming soon page with a dark theme, a countdown and a signup…"


@pytest.mark.parametrize(
    ("prompt", "subject"),
    [
        ("\n\n   make   it   pop  \nmore", "make it pop"),
        ("## Landing page\nwith details", "Landing page"),
        ("x" * 100, "x" * 71 + "…"),  # one long word: cut inside it rather than lose it
        ("   \n\t", "Forgeline build"),
        ("tab\there\x00and\x1bcontrol", "tab hereandcontrol"),
    ],
)
def test_subject_edge_cases(prompt: str, subject: str) -> None:
    """Leading blank lines, runs of spaces, heading marks, giant words, blank prompts and
    control characters all give a clean one-line subject."""
    assert commit_subject(prompt) == subject
    assert "\n" not in commit_subject(prompt)


def test_body_keeps_the_whole_prompt_wrapped() -> None:
    """Subject, blank line, then every word of the prompt in lines of at most 72."""
    message = build_commit_message(LONG)
    subject, blank, *body = message.split("\n")
    assert blank == ""
    assert subject.endswith("…")
    assert " ".join(body) == LONG
    assert all(len(line) <= 72 for line in body)


def test_wrapping_keeps_structure_code_and_urls() -> None:
    """Paragraphs, list items (hanging indent), fenced code and long URLs survive wrapping."""
    url = "https://example.com/" + "segment/" * 12
    code = "const veryLongName = computeSomethingElaborate(argumentOne, argumentTwo, three);"
    prompt = (
        "Intro line.\n\n"
        "- a list item that is long enough to need wrapping onto a second line for sure\n"
        f"```js\n{code}\n```\n"
        f"See {url}\n"
        "# Heading kept"
    )
    wrapped = wrap_prompt(prompt).split("\n")
    assert wrapped[:2] == ["Intro line.", ""]
    assert wrapped[2].startswith("- a list item")
    assert wrapped[3] == "  for sure"  # hanging indent under the item's text
    assert code in wrapped  # code is never re-flowed
    assert url in wrapped  # nor is a URL broken
    assert wrapped[-1] == "# Heading kept"


def test_carriage_returns_are_normalized() -> None:
    """Windows line endings in a prompt do not leak into the commit message."""
    assert "\r" not in build_commit_message("Title\r\n\r\nBody line\r\n")


def test_trailers_are_their_own_last_paragraph() -> None:
    """The task trailer follows a blank line, whatever the prompt ends with."""
    message = with_trailers("Subject\n\nSigned-off-by: someone", task_trailers("t-1"))
    assert message.endswith("\n\nForgeline-Task: t-1\n")
    assert with_trailers("Subject", {}) == "Subject\n"
    assert task_trailers("abc") == {TASK_TRAILER: "abc"}


@pytest.mark.parametrize(
    "trailers",
    [{"Bad Key": "v"}, {"Key": "two\nlines"}, {"Key": ""}, {"Key": " padded"}, {":": "v"}],
)
def test_malformed_trailers_are_refused(trailers: dict[str, str]) -> None:
    """Trailer keys are tokens and values single, trimmed lines."""
    with pytest.raises(ValidationError):
        format_trailers(trailers)


def test_review_branch_is_named_after_the_task() -> None:
    """Builds without auto_deploy push to forgeline/<task id>."""
    task = "3f2a9c1e-7b7d-4e0b-9d8e-1c2b3a4d5e6f"
    assert review_branch(task) == f"forgeline/{task}"
    for bad in ("", "a/b", "x..y", "t.lock"):
        with pytest.raises(ValidationError):
            review_branch(bad)


@pytest.mark.parametrize("name", ["main", "release/1.2", "forgeline/abc-123", "feat_x"])
def test_valid_branch_names(name: str) -> None:
    """Ordinary branch names pass unchanged."""
    assert validate_branch_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-x", "/x", "x/", "a..b", "a//b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b",
     "x.lock", "a/.hidden", "@", "a@{1}", "end.", "tab\tname"],
)  # fmt: skip
def test_invalid_branch_names(name: str) -> None:
    """What `git check-ref-format --branch` refuses is refused before git runs."""
    with pytest.raises(ValidationError):
        validate_branch_name(name)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("/srv/forgeline/git/demo.git", RemoteKind.PATH),
        ("file:///srv/git/demo.git", RemoteKind.PATH),
        ("https://git.example.com/team/demo.git", RemoteKind.HTTPS),
        ("https://bot@git.example.com/team/demo.git", RemoteKind.HTTPS),
        ("http://127.0.0.1:3000/demo.git", RemoteKind.HTTP),
        ("ssh://git@git.example.com:2222/team/demo.git", RemoteKind.SSH),
        ("git@github.com:team/demo.git", RemoteKind.SSH),
    ],
)
def test_supported_remotes(url: str, kind: RemoteKind) -> None:
    """Paths, https, http and both ssh spellings are recognized."""
    assert classify_remote(url) == kind
    assert GitRemote(url).kind == kind


@pytest.mark.parametrize(
    "url",
    [
        "",
        "relative/repo.git",
        "-uhelp",
        "ext::sh -c touch% /tmp/pwned",
        "git://example.com/demo.git",
        "ftp://example.com/demo.git",
        " https://example.com/x.git",
        "https:///no-host",
        "https://host:99999/x.git",
        "https://host:port/x.git",
        "file://relative",
    ],
)
def test_unsupported_remotes(url: str) -> None:
    """Relative paths, option-like strings and other transports never reach git."""
    with pytest.raises(ValidationError):
        classify_remote(url)


def test_a_password_in_the_url_is_refused_without_echoing_it() -> None:
    """Credentials belong in the credential store; the refusal does not repeat them."""
    with pytest.raises(ValidationError) as caught:
        GitRemote("https://bot:s3cr3t-t0ken@git.example.com/demo.git")
    assert "s3cr3t-t0ken" not in str(caught.value)


def test_token_rules() -> None:
    """Tokens go with http(s) only, never over plain http to another machine, and never
    show in a remote's repr."""
    token = Secret("s3cr3t-t0ken", "git-token")
    remote = GitRemote("https://git.example.com/demo.git", token=token)
    assert "s3cr3t-t0ken" not in repr(remote)
    assert remote.auth_username == "x-access-token"
    assert GitRemote("https://alice@git.example.com/d.git", token=token).auth_username == "alice"
    assert GitRemote("http://localhost:8080/d.git", token=token).kind == RemoteKind.HTTP
    for url in ("http://git.example.com/d.git", "/srv/git/d.git", "ssh://git@h/d.git"):
        with pytest.raises(ValidationError):
            GitRemote(url, token=token)
    with pytest.raises(ValidationError):
        GitRemote("https://git.example.com/d.git", token=token, username="a:b")


@pytest.mark.parametrize(("name", "email"), [("", "a@b"), ("x", " "), ("x<y", "a@b"), ("x", "a\n")])
def test_unusable_authors_are_refused(name: str, email: str) -> None:
    """An author git would reject or mangle fails early, with the field named."""
    with pytest.raises(ValidationError):
        GitAuthor(name, email)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://Git.Example.com/team/d.git", "https://git.example.com"),
        ("https://bot@git.example.com:8443/d.git", "https://git.example.com:8443"),
        ("http://[::1]:8080/d.git", "http://[::1]:8080"),
        ("/srv/git/d.git", "/srv/git/d.git"),
    ],
)
def test_origin_is_what_a_token_is_bound_to(url: str, origin: str) -> None:
    """Scheme, host and port only: no user, no path (git's credential matching key)."""
    assert GitRemote(url).origin == origin


def test_accepts_token() -> None:
    """Tokens may go to https remotes and to plain http on this machine only."""
    assert accepts_token("https://git.example.com/d.git")
    assert accepts_token("http://127.0.0.1:3000/d.git")
    assert not accepts_token("http://git.example.com/d.git")
    assert not accepts_token("/srv/git/d.git")
    assert not accepts_token("git@github.com:team/d.git")


def test_embedded_repository_path() -> None:
    """Embedded remotes live at <git dir>/<project>.git; bad names never make a path."""
    assert embedded_repository("/data/git/", "my-app") == "/data/git/my-app.git"
    for name in ("../etc", "My-App", "a/b", ""):
        with pytest.raises(ValidationError):
            embedded_repository("/data/git", name)
    with pytest.raises(ValidationError):
        embedded_repository("relative/git", "app")
