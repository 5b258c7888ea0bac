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

Sessions are filed per project directory: ``--resume <id>`` finds a session recorded from
the same workdir.
"""

from __future__ import annotations

import json
from typing import Any

from forgeline.adapters.agents.gemini.parser import GeminiParser
from forgeline.adapters.agents.jsonl import JsonLinesAgent, Launch, child_env, write_file
from forgeline.domain.agent import (
    AgentCapabilities,
    AgentProvider,
    AgentRequest,
    CostSource,
)

#: Variables of forgeline's environment passed on: the endpoint and key, and the CLI's own.
ENV_PASS_PREFIXES = ("GEMINI_", "GOOGLE_GEMINI_", "GOOGLE_API_KEY")
#: The only mode headless runs use here: every tool call approved.
PERMISSION_MODES = ("yolo",)


class GeminiAgent(JsonLinesAgent):
    """Drives ``gemini`` through a :class:`Workspace` (see the module docstring).

    ``<state_dir>/<key>/home`` is the CLI's ``HOME``. ``max_retries`` bounds the CLI's
    attempts at a model request (``general.maxAttempts`` is retries + 1). The other
    options are :class:`JsonLinesAgent`'s.
    """

    label = "gemini"

    def __init__(self, *, binary: str = "gemini", max_retries: int = 2, **options: Any) -> None:
        super().__init__(binary=binary, **options)
        self._max_retries = max_retries

    @property
    def name(self) -> str:
        """``gemini``."""
        return AgentProvider.GEMINI.value

    def new_parser(self, request: AgentRequest) -> GeminiParser:
        """Gemini's parser; the init event names the workdir."""
        return GeminiParser(cwd=request.workdir, provider=self.name, raw=self._raw_events)

    def describe(
        self, available: bool, version: str | None, detail: str | None
    ) -> AgentCapabilities:
        """Resume by session id; tokens reported, cost estimated; any model by name."""
        return AgentCapabilities(
            provider=self.name,
            available=available,
            version=version,
            detail=detail,
            permission_modes=PERMISSION_MODES,
            cost=CostSource.ESTIMATED,
        )

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
        env = child_env(self._environ, request.env, prefixes=ENV_PASS_PREFIXES, fixed=fixed)
        await write_file(
            self._workspace,
            f"{home}/.gemini/settings.json",
            json.dumps(self.settings(), indent=2),
            root,
            env["PATH"],
        )
        return Launch(argv=self.argv(request), env=env)
