"""Git rules without I/O: remotes, authors, branch names and the message of a build commit.

What a build commits and where it pushes are part of forgeline's contract with its users
(a ``Forgeline-Task: <id>`` trailer, review branches ``forgeline/<task id>``), so they live
here as small pure functions the worker and the git adapter share.
"""

from __future__ import annotations

import ipaddress
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from forgeline.domain.errors import ValidationError
from forgeline.domain.project import validate_project_name
from forgeline.domain.secrets import Secret

#: The trailer naming the task that produced a commit.
TASK_TRAILER: Final = "Forgeline-Task"
#: Builds without ``auto_deploy`` push to ``forgeline/<task id>`` for review.
REVIEW_BRANCH_PREFIX: Final = "forgeline/"
#: Longest subject line: what ``git log --oneline`` and forges show without cutting.
SUBJECT_MAX: Final = 72
#: Width the prompt is wrapped to in the commit body.
BODY_WIDTH: Final = 72
#: Username sent with a token when the remote URL names none; GitHub, Gitea/Forgejo and
#: GitLab all accept a token as the password with an arbitrary (or this) username.
DEFAULT_TOKEN_USERNAME: Final = "x-access-token"  # noqa: S105 - a username, not a secret

_ELLIPSIS: Final = "…"
# ``user@host:path`` — git's scp-like ssh syntax (no scheme, a colon before any slash).
_SCP_LIKE = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:(?!//)\S+")
_TRAILER_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
# Control characters git would refuse or mangle in a message; newline and tab stay.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_FENCE = re.compile(r"\s*(```|~~~)")
_LIST_MARKER = re.compile(r"(\s*(?:[-*+]|\d+[.)])\s+)")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


class RemoteKind(StrEnum):
    """How forgeline reaches a remote repository."""

    PATH = "path"  # a repository on the workspace's disk (embedded mode)
    HTTPS = "https"
    HTTP = "http"  # plain http; a token may only travel to a loopback host
    SSH = "ssh"


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class GitAuthor:
    """Who a commit is by (author and committer alike)."""

    name: str
    email: str

    def __post_init__(self) -> None:
        for field_name, value in (("name", self.name), ("email", self.email)):
            if not value.strip() or any(c in value for c in "<>\n\r\0"):
                raise ValidationError(f"git author {field_name} {value!r} is not usable")


@dataclass(frozen=True, slots=True)
class GitRemote:
    """A remote repository: its URL and, for http(s), the token that authenticates pushes.

    The URL never carries a secret: a password or token inside it is refused, so the URL
    can be stored, logged and shown as is. The token travels beside it as a
    :class:`Secret` and reaches git only through the child's environment.
    """

    url: str
    token: Secret | None = None
    username: str = DEFAULT_TOKEN_USERNAME

    def __post_init__(self) -> None:
        kind = classify_remote(self.url)  # raises for a URL forgeline cannot use
        if self.token is not None:
            if kind not in (RemoteKind.HTTPS, RemoteKind.HTTP):
                raise ValidationError(
                    f"a token only authenticates http(s) remotes, not {kind} ({self.url})"
                )
            if kind is RemoteKind.HTTP and not _is_loopback(urlsplit(self.url).hostname):
                raise ValidationError(
                    f"refusing to send a token over plain http to {self.url}; use https"
                )
        if not self.username or any(c in self.username for c in ":\n\r\0"):
            raise ValidationError(f"git username {self.username!r} is not usable")

    @property
    def kind(self) -> RemoteKind:
        """Path, https, http or ssh."""
        return classify_remote(self.url)

    @property
    def origin(self) -> str:
        """``scheme://host[:port]`` of a URL remote (what a credential is bound to); the
        URL itself for a path or scp-like remote."""
        parts = urlsplit(self.url)
        if "://" not in self.url or not parts.hostname:
            return self.url
        host = parts.hostname
        if ":" in host:  # an IPv6 literal keeps its brackets
            host = f"[{host}]"
        return f"{parts.scheme.lower()}://{host}" + (f":{parts.port}" if parts.port else "")

    @property
    def auth_username(self) -> str:
        """The username sent with the token: the URL's own, else :attr:`username`."""
        if self.kind in (RemoteKind.HTTPS, RemoteKind.HTTP):
            return urlsplit(self.url).username or self.username
        return self.username


def classify_remote(url: str) -> RemoteKind:
    """The kind of ``url``; ``ValidationError`` for anything forgeline does not push to.

    Accepted: an absolute path (or ``file://``), ``https://``, ``http://``, ``ssh://`` and
    scp-like ``user@host:path``. Refused: relative paths (their meaning depends on a
    working directory), URLs with a password, leading dashes (argument injection) and
    every other transport (``ext::`` runs commands).
    """
    if not url or url != url.strip() or any(c in url for c in "\n\r\0"):
        raise ValidationError("remote URL must be non-empty, without surrounding whitespace")
    if url.startswith("/"):
        return RemoteKind.PATH
    if url.startswith("file://"):
        if not urlsplit(url).path.startswith("/"):
            raise ValidationError(f"file remote {url!r} must name an absolute path")
        return RemoteKind.PATH
    if "://" in url:
        parts = urlsplit(url)
        try:
            kind = {"https": RemoteKind.HTTPS, "http": RemoteKind.HTTP, "ssh": RemoteKind.SSH}[
                parts.scheme.lower()
            ]
        except KeyError:
            raise ValidationError(
                f"remote URL scheme {parts.scheme!r} is not supported (use a path, "
                "https://, http:// or ssh://)"
            ) from None
        if parts.password is not None:
            # Never echo the URL: it holds the secret we are refusing.
            raise ValidationError(
                "remote URL must not carry a password or token; store it as a credential"
            )
        if not parts.hostname:
            raise ValidationError(f"remote URL {url!r} names no host")
        try:
            _ = parts.port  # raises for a port that is not a number in range
        except ValueError:
            raise ValidationError(f"remote URL {url!r} has an invalid port") from None
        return kind
    if _SCP_LIKE.fullmatch(url):
        return RemoteKind.SSH
    raise ValidationError(
        f"remote {url!r} is neither an absolute path nor an https://, http:// or ssh:// URL"
    )


def accepts_token(url: str) -> bool:
    """True if a token may be sent to ``url``: https, or plain http to this machine.

    The worker asks this before fetching the ``git-token`` credential for a project.
    """
    kind = classify_remote(url)
    if kind is RemoteKind.HTTPS:
        return True
    return kind is RemoteKind.HTTP and _is_loopback(urlsplit(url).hostname)


def embedded_repository(base_dir: str, project: str) -> str:
    """Where the bare repository of ``project`` lives in embedded mode:
    ``<base_dir>/<project>.git`` (``base_dir`` is ``FORGELINE_GIT_BASE_URL``, by default
    ``<data dir>/git``)."""
    if not base_dir.startswith("/"):
        raise ValidationError(f"the embedded git directory must be absolute, got {base_dir!r}")
    return f"{base_dir.rstrip('/')}/{validate_project_name(project)}.git"


def validate_branch_name(name: str) -> str:
    """Return ``name`` if git accepts it as a branch (``git check-ref-format --branch``).

    Checked here, before any command runs, so a bad name is a 422 and never an argument
    git could read as an option.
    """
    problems = []
    if not name or name.startswith(("-", "/")) or name.endswith(("/", ".", ".lock")):
        problems.append("must not be empty, start with - or /, or end with /, . or .lock")
    if ".." in name or "//" in name or "@{" in name or name == "@":
        problems.append("must not contain .., //, @{ or be @")
    if _BAD_REF_CHARS.search(name):
        problems.append("must not contain spaces, control characters or ~^:?*[\\")
    if any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        problems.append("no path component may start with . or end with .lock")
    if problems:
        raise ValidationError(f"invalid branch name {name!r}: {'; '.join(problems)}")
    return name


def review_branch(task_id: str) -> str:
    """The branch a build without ``auto_deploy`` pushes to: ``forgeline/<task id>``."""
    if not task_id or "/" in task_id:
        raise ValidationError(f"task id {task_id!r} cannot name a review branch")
    return validate_branch_name(f"{REVIEW_BRANCH_PREFIX}{task_id}")


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def commit_subject(prompt: str, limit: int = SUBJECT_MAX) -> str:
    """The first line of a build commit: the prompt's first line, cut at a word to
    ``limit`` characters (ending with ``…`` when cut)."""
    lines = (" ".join(line.split()) for line in _clean(prompt).split("\n"))
    first = next((line for line in lines if line), "")
    # A markdown heading marker says nothing in a subject line.
    first = first.lstrip("#").strip() or first
    if not first:
        return "Forgeline build"
    if len(first) <= limit:
        return first
    cut = first[: limit - len(_ELLIPSIS)]
    space = cut.rfind(" ")
    if space >= limit // 2:  # keep whole words unless that would lose half the line
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + _ELLIPSIS


def wrap_prompt(prompt: str, width: int = BODY_WIDTH) -> str:
    """The prompt wrapped to ``width``, line by line.

    The author's own line breaks, blank lines, list items (wrapped under their text) and
    fenced code blocks (left untouched) are kept; long words such as URLs are never split.
    """
    out: list[str] = []
    in_fence = False
    for raw in _clean(prompt).strip("\n").split("\n"):
        line = raw.rstrip()
        if _FENCE.match(line):
            in_fence = not in_fence
            out.append(line)
            continue
        if in_fence or len(line) <= width:
            out.append(line)
            continue
        marker = _LIST_MARKER.match(line)
        indent = line[: len(line) - len(line.lstrip())]
        hanging = " " * len(marker.group(1)) if marker else indent
        out.extend(
            textwrap.wrap(
                line.strip(),
                width=width,
                initial_indent=indent,
                subsequent_indent=hanging,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(out)


def format_trailers(trailers: Mapping[str, str]) -> str:
    """``Key: value`` lines, one per trailer, in the given order."""
    lines = []
    for key, value in trailers.items():
        if not _TRAILER_KEY.fullmatch(key):
            raise ValidationError(f"invalid trailer key {key!r}")
        if not value or value != value.strip() or any(c in value for c in "\n\r\0"):
            raise ValidationError(f"invalid value for trailer {key}: {value!r}")
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def build_commit_message(prompt: str) -> str:
    """Subject (≤ 72 characters) summarizing ``prompt``, a blank line, the whole prompt
    wrapped to 72 columns. A prompt that fits in the subject has no body.

    Trailers (``Forgeline-Task``) are added by :func:`with_trailers`, as their own last
    paragraph, so git's trailer parsing finds them whatever the prompt ends with.
    """
    subject = commit_subject(prompt)
    body = wrap_prompt(prompt)
    if not body.strip() or body.strip() == subject:
        return subject
    return f"{subject}\n\n{body}"


def with_trailers(message: str, trailers: Mapping[str, str]) -> str:
    """``message`` followed by a blank line and its trailers (none: unchanged)."""
    message = _clean(message).rstrip()
    if not trailers:
        return message + "\n"
    return f"{message}\n\n{format_trailers(trailers)}\n"


def task_trailers(task_id: str) -> dict[str, str]:
    """The trailers of a build commit: ``{"Forgeline-Task": task_id}``."""
    return {TASK_TRAILER: task_id}
