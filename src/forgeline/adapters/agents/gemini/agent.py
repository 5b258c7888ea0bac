"""GeminiAgent: the Gemini CLI, one ``gemini -p … --output-format stream-json`` per run.

The shared JSON-lines machinery (:mod:`forgeline.adapters.agents.jsonl`) runs it; this
module supplies the command line, the environment, the settings file and the parser.
What is Gemini's own:

- ``--approval-mode yolo``: every tool call is approved (forgeline's sandbox is the
  boundary); the checkout is trusted (``GEMINI_CLI_TRUST_WORKSPACE``), else headless mode
  refuses to run in a folder it has not seen;
- ``HOME`` is the project's agent home, where the CLI keeps ``~/.gemini`` (sessions,
  settings). The adapter writes ``~/.gemini/settings.json`` before each run:
  ``security.auth.selectedType = "gemini-api-key"`` (without it headless mode exits 41
  "Invalid auth method selected"), bounded model attempts, no telemetry or update checks;
- the endpoint is the CLI's own ``GOOGLE_GEMINI_BASE_URL`` and ``GEMINI_API_KEY``, from
  forgeline's environment or a build's credentials;
- ``result.stats`` holds the run's own tokens; Gemini reports no dollars, so the cost is
  estimated from the price table.

Sessions are filed per project directory, and every attempt of a build has a checkout of
its own: before a resume, the session's file is copied to where the CLI migrates a project's
data from (``~/.gemini/tmp/<sha256 of the workdir>``), so a later build finds it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from forgeline.adapters.agents.gemini.parser import GeminiParser
from forgeline.adapters.agents.jsonl import SESSION_ID, JsonLinesAgent, Launch
from forgeline.domain.agent import AgentProvider, AgentRequest

#: Copies a session's file into the legacy (hash-named) project directory of the run's
#: workdir, which the CLI migrates into that project's directory on start: ``$1`` the
#: ``.gemini`` directory, ``$2`` the session id, ``$3`` the sha256 of the workdir.
_CARRY_SESSION = (
    'short=$(printf %s "$2" | cut -c1-8); dest="$1/tmp/$3/chats"; '
    'for f in "$1"/tmp/*/chats/session-*-"$short".jsonl; do [ -f "$f" ] || continue; '
    'grep -qF "$2" "$f" || continue; mkdir -p "$dest" && cp -p "$f" "$dest/"; exit $?; '
    "done; exit 0"
)


class GeminiAgent(JsonLinesAgent):
    """Drives ``gemini`` through a :class:`Workspace` (see the module docstring).

    ``<state_dir>/<key>/home`` is the CLI's ``HOME``. ``max_retries`` bounds the CLI's
    attempts at a model request (``general.maxAttempts`` is retries + 1). The other
    options are :class:`JsonLinesAgent`'s.
    """

    label = "gemini"
    #: ``gemini --version`` otherwise starts node twice (the CLI relaunches itself with a
    #: larger heap): 4 s instead of 1.7 s on a loaded 2-core machine, too close to the
    #: availability bound. Runs keep the relaunch.
    probe_env: Mapping[str, str] = MappingProxyType({"GEMINI_CLI_NO_RELAUNCH": "true"})
    #: The endpoint, key and model, and the CLI's own variables.
    env_prefixes = ("GEMINI_", "GOOGLE_GEMINI_", "GOOGLE_API_KEY")
    #: The only mode headless runs use here: every tool call approved.
    permission_modes = ("yolo",)

    @property
    def name(self) -> str:
        """``gemini``."""
        return AgentProvider.GEMINI.value

    def new_parser(self, request: AgentRequest) -> GeminiParser:
        """Gemini's parser; the init event names the workdir."""
        return GeminiParser(cwd=request.workdir, provider=self.name, raw=self._raw_events)

    def settings(self) -> dict[str, Any]:
        """The CLI's ``settings.json`` in the agent home."""
        return {
            "security": {"auth": {"selectedType": "gemini-api-key"}},
            "general": {"maxAttempts": self._max_retries + 1, "disableAutoUpdate": True},
            "privacy": {"usageStatisticsEnabled": False},
            "telemetry": {"enabled": False},
        }

    def argv(self, request: AgentRequest) -> list[str]:
        """The command line of one run. The prompt is the value of ``-p`` (the equals form:
        a prompt starting with ``-`` is not an option)."""
        argv = [
            self._binary,
            f"--prompt={request.prompt}",
            "--output-format",
            "stream-json",
            "--approval-mode",
            "yolo",
        ]
        if request.model:
            argv.append(f"--model={request.model}")
        if request.resume_session:
            argv.append(f"--resume={request.resume_session}")
        return argv

    async def prepare(self, request: AgentRequest, root: str) -> Launch:
        """``HOME`` under ``root``, with the settings file the CLI needs."""
        home = f"{root}/home"
        fixed = {"HOME": home, "GEMINI_CLI_TRUST_WORKSPACE": "true", "NO_COLOR": "1"}
        env = self.child_env(request, fixed)
        await self.write_settings(root, "home/.gemini/settings.json", self.settings())
        if request.resume_session and SESSION_ID.fullmatch(request.resume_session):
            await self._carry_session(root, f"{home}/.gemini", request)
        return Launch(argv=self.argv(request), env=env)

    async def _carry_session(self, root: str, gemini_dir: str, request: AgentRequest) -> None:
        """Make the resumed session findable from this run's workdir (see the module); a
        failure is left for the CLI to report."""
        assert request.resume_session is not None  # noqa: S101 - checked by the caller
        digest = hashlib.sha256(request.workdir.encode()).hexdigest()
        argv = ["sh", "-c", _CARRY_SESSION, "forgeline-carry-session", gemini_dir]
        await self.run_in_home(root, [*argv, request.resume_session, digest])
