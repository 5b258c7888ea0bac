"""The environment an agent's program gets: built whole, never inherited implicitly."""

from __future__ import annotations

from collections.abc import Mapping

#: Variables of forgeline's own environment that any CLI may see. Everything else is left
#: out (unrelated secrets of the host have no business in an agent's shell); each adapter
#: adds the prefixes of its own CLI (``ANTHROPIC_``, ``OPENAI_`` …).
ENV_ALLOW_LIST = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "TMPDIR",
    "TERM",
    "USER",
    "LOGNAME",
    "SHELL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
)


def child_env(
    environ: Mapping[str, str],
    request_env: Mapping[str, str],
    *,
    prefixes: tuple[str, ...],
    fixed: Mapping[str, str],
) -> dict[str, str]:
    """The whole environment of a CLI: nothing is inherited implicitly.

    In order, later wins: the allow-list from forgeline's ``environ``; every variable of
    ``environ`` with one of ``prefixes`` (an operator's gateway, ``OPENAI_BASE_URL``); the
    request's variables (the build's credentials); then the adapter's ``fixed`` ones
    (``HOME``, the CLI's state directory, no telemetry).
    """
    env = {key: environ[key] for key in ENV_ALLOW_LIST if key in environ}
    env.update({k: v for k, v in environ.items() if k.startswith(prefixes)})
    env.update(request_env)
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env.update(fixed)
    return env
