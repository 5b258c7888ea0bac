"""ClaudeCodeAgent: the real ``claude`` CLI in print mode, streaming ``stream-json``.

One run is one ``claude -p … --output-format stream-json --verbose`` process; the shared
JSON-lines machinery (:mod:`forgeline.adapters.agents.jsonl`) runs it, enforces the limits
and decides the one result. This module supplies what is Claude's own: the command line,
the environment (:func:`build_child_env`), carrying a session's transcript to a new
checkout, and :class:`~forgeline.adapters.agents.claude_code.parser.StreamJsonParser`.
SIGINT makes the CLI stop its tool commands and print a result, which the stop sequence
gives it time to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from forgeline.adapters.agents.claude_code.parser import StreamJsonParser
from forgeline.adapters.agents.environment import child_env
from forgeline.adapters.agents.jsonl import SESSION_ID, JsonLinesAgent, Launch
from forgeline.domain.agent import AgentProvider, AgentRequest, CostSource

PERMISSION_MODES = ("bypassPermissions", "acceptEdits", "default", "plan")
MODELS = ("opus", "sonnet", "haiku")

#: Every variable of forgeline's environment with one of these prefixes is passed on, so
#: an operator's gateway (``ANTHROPIC_BASE_URL``) and CLI tuning reach the CLI. (An
#: inherited ``IS_SANDBOX=yes`` is not on the allow-list: it makes the CLI refuse to start.)
ENV_PASS_PREFIXES = ("ANTHROPIC_", "CLAUDE_CODE_")


def build_child_env(
    environ: Mapping[str, str],
    request_env: Mapping[str, str],
    *,
    home: str,
    config_dir: str,
    permission_mode: str,
    max_retries: int,
    runs_as_root: bool = True,
) -> dict[str, str]:
    """The whole environment of the CLI: nothing is inherited implicitly.

    In order, later wins (:func:`~forgeline.adapters.agents.environment.child_env`): the
    allow-list from forgeline's ``environ``; every ``ANTHROPIC_*``/``CLAUDE_CODE_*`` of
    ``environ``; the request's variables (the build's credentials); then the fixed ones:
    ``HOME`` and ``CLAUDE_CONFIG_DIR`` (stable per project, so sessions can be resumed), no
    non-essential traffic, no auto-updater, bounded retries, and ``IS_SANDBOX=1`` exactly
    when the permission mode is ``bypassPermissions`` and the CLI may run as root (it
    refuses that mode to root without it, and refuses any other value); in forgeline's
    sandbox it is an unprivileged user.
    """
    fixed = {
        "HOME": home,
        "CLAUDE_CONFIG_DIR": config_dir,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": str(max_retries),
    }
    env = child_env(environ, request_env, prefixes=ENV_PASS_PREFIXES, fixed=fixed)
    if permission_mode == "bypassPermissions" and runs_as_root:
        env["IS_SANDBOX"] = "1"
    else:
        env.pop("IS_SANDBOX", None)
    return env


#: The CLI's longest escaped project directory name before it appends a hash.
_PROJECT_DIR_MAX = 200


def project_dir_name(cwd: str) -> str:
    """The name the CLI gives ``<config>/projects/<name>``, where a session's transcript
    lives, for a run in ``cwd``: every UTF-16 unit that is not an ASCII letter or digit
    becomes ``-``; past 200 characters the name is cut and a base-36 hash of ``cwd`` (Java's
    string hash, as the CLI computes it) appended. Mirrors claude 2.1's ``projects/``
    layout; a mismatch only means a resume from another checkout is not found."""
    units = cwd.encode("utf-16-le")
    codes = [int.from_bytes(units[i : i + 2], "little") for i in range(0, len(units), 2)]
    name = "".join(chr(c) if chr(c).isascii() and chr(c).isalnum() else "-" for c in codes)
    if len(name) <= _PROJECT_DIR_MAX:
        return name
    value = 0
    for code in codes:
        value = (value * 31 + code) & 0xFFFFFFFF
    value = abs(value - (1 << 32) if value >= 1 << 31 else value)
    digits = ""
    while True:
        value, rest = divmod(value, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[rest] + digits
        if not value:
            break
    return f"{name[:_PROJECT_DIR_MAX]}-{digits}"


class ClaudeCodeAgent(JsonLinesAgent):
    """Drives the ``claude`` CLI through a :class:`Workspace` (see the module docstring).

    ``<state_dir>/<key>/home`` is the CLI's ``HOME`` and ``<state_dir>/<key>/config`` its
    ``CLAUDE_CONFIG_DIR`` (see :meth:`AgentRequest.state_name`). ``runs_as_root`` is False
    when the workspace runs the CLI unprivileged (the bubblewrap sandbox), so it needs no
    ``IS_SANDBOX``. The other options are :class:`JsonLinesAgent`'s.

    Every attempt of a build works in a checkout of its own, so a session continued by a
    later build was recorded under another cwd, where the CLI would not find it: its
    transcript is carried into the new cwd's project directory first.
    """

    label = "claude"
    permission_modes = PERMISSION_MODES
    models = MODELS
    #: The CLI reports each run's dollars.
    cost_source = CostSource.REPORTED

    def __init__(
        self,
        *,
        binary: str = "claude",
        permission_mode: str = "bypassPermissions",
        runs_as_root: bool = True,
        **options: Any,
    ) -> None:
        if permission_mode not in PERMISSION_MODES:
            raise ValueError(f"unknown permission mode {permission_mode!r}")
        super().__init__(binary=binary, **options)
        self._permission_mode = permission_mode
        self._runs_as_root = runs_as_root

    @property
    def name(self) -> str:
        """``claude-code``."""
        return AgentProvider.CLAUDE_CODE.value

    def new_parser(self, request: AgentRequest) -> StreamJsonParser:
        """Claude's stream-json parser."""
        return StreamJsonParser(provider=self.name, raw=self._raw_events)

    def version_env(self) -> dict[str, str]:
        """A probe environment: no traffic, no state of a project."""
        return build_child_env(
            self._environ,
            {},
            home=self._environ.get("HOME", "/"),
            config_dir=f"{self._state_dir}/probe",
            permission_mode="default",
            max_retries=0,
        )

    def argv(self, request: AgentRequest) -> list[str]:
        """The CLI's command line for ``request``."""
        argv = [
            self._binary,
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            self._permission_mode,
        ]
        if request.model:
            argv += ["--model", request.model]
        if request.max_turns is not None:
            argv += ["--max-turns", str(request.max_turns)]
        if request.max_cost_usd is not None:
            argv += ["--max-budget-usd", f"{request.max_cost_usd:.6f}"]
        if request.resume_session:
            # The equals form: a session id can never be mistaken for the prompt.
            argv.append(f"--resume={request.resume_session}")
        # After "--", a prompt starting with "-" is still the prompt.
        argv += ["--", request.prompt]
        return argv

    async def prepare(self, request: AgentRequest, root: str) -> Launch:
        """``HOME`` and ``CLAUDE_CONFIG_DIR`` under ``root``; a resumed session's transcript
        carried to this cwd."""
        home, config_dir = f"{root}/home", f"{root}/config"
        env = build_child_env(
            self._environ,
            request.env,
            home=home,
            config_dir=config_dir,
            permission_mode=self._permission_mode,
            max_retries=self._max_retries,
            runs_as_root=self._runs_as_root,
        )
        await self._workspace.ensure_dir(home)
        await self._workspace.ensure_dir(config_dir)
        if request.resume_session and SESSION_ID.fullmatch(request.resume_session):
            name = project_dir_name(request.workdir)
            relative = f"{request.resume_session}.jsonl"
            await self.carry_file(root, f"{config_dir}/projects", relative, name)
        return Launch(argv=self.argv(request), env=env)
