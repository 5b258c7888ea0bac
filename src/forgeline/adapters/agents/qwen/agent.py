"""QwenAgent: Qwen Code, one ``qwen -p … --output-format stream-json`` process per run.

The shared JSON-lines machinery (:mod:`forgeline.adapters.agents.jsonl`) runs it; this
module supplies the command line, the environment, the settings file and the parser
(Claude Code's, :class:`~forgeline.adapters.agents.qwen.parser.QwenParser`). What is Qwen's:

- ``--auth-type openai --approval-mode yolo``: an OpenAI-compatible endpoint, every tool
  call approved (forgeline's sandbox is the boundary);
- the endpoint is the CLI's own ``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` and
  ``OPENAI_MODEL``, from forgeline's environment or a build's credentials;
- ``HOME`` is the project's agent home (``~/.qwen``: sessions, settings); the adapter
  writes ``~/.qwen/settings.json`` before each run: the SDK's retries bounded
  (``model.generationConfig.maxRetries``), no telemetry or update checks. (Qwen Code
  0.15.10 also retries a 5xx answer 7 times with backoff, about 80 s, which no setting
  changes: such a run fails only then, or at its timeout.)
- usage is cumulative over a resumed session: the machinery keeps the session's total and
  reports the run's share; Qwen reports no dollars, so the cost is estimated from the
  price table.

Pinned at 0.15.10, the newest version that runs on Node 20 (0.24.x needs Node ≥ 22).
"""

from __future__ import annotations

import json
from typing import Any

from forgeline.adapters.agents.jsonl import JsonLinesAgent, Launch, child_env, write_file
from forgeline.adapters.agents.qwen.parser import QwenParser
from forgeline.domain.agent import (
    AgentCapabilities,
    AgentProvider,
    AgentRequest,
    CostSource,
)

#: Variables of forgeline's environment passed on: the endpoint, key and model.
ENV_PASS_PREFIXES = ("OPENAI_", "QWEN_")
#: The only mode headless runs use here: every tool call approved.
PERMISSION_MODES = ("yolo",)


class QwenAgent(JsonLinesAgent):
    """Drives ``qwen`` through a :class:`Workspace` (see the module docstring).

    ``<state_dir>/<key>/home`` is the CLI's ``HOME``. ``max_retries`` bounds the OpenAI
    SDK's retries of a request. The other options are :class:`JsonLinesAgent`'s.
    """

    label = "qwen"

    def __init__(self, *, binary: str = "qwen", max_retries: int = 2, **options: Any) -> None:
        super().__init__(binary=binary, **options)
        self._max_retries = max_retries

    @property
    def name(self) -> str:
        """``qwen``."""
        return AgentProvider.QWEN.value

    def new_parser(self, request: AgentRequest) -> QwenParser:
        """Claude's parser, adapted (see :class:`QwenParser`)."""
        return QwenParser(provider=self.name, raw=self._raw_events)

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
            "model": {"generationConfig": {"maxRetries": self._max_retries}},
            "general": {"disableAutoUpdate": True},
            "privacy": {"usageStatisticsEnabled": False},
            "telemetry": {"enabled": False},
        }

    def argv(self, request: AgentRequest) -> list[str]:
        """The command line of one run (equals forms: values starting with ``-`` stay
        values)."""
        argv = [
            self._binary,
            f"--prompt={request.prompt}",
            "--output-format",
            "stream-json",
            "--auth-type",
            "openai",
            "--approval-mode",
            "yolo",
        ]
        if request.model:
            argv.append(f"--model={request.model}")
        if request.max_turns is not None:
            argv.append(f"--max-session-turns={request.max_turns}")
        if request.resume_session:
            argv.append(f"--resume={request.resume_session}")
        return argv

    async def prepare(self, request: AgentRequest, root: str) -> Launch:
        """``HOME`` under ``root``, with the settings file."""
        home = f"{root}/home"
        fixed = {"HOME": home, "NO_COLOR": "1"}
        env = child_env(self._environ, request.env, prefixes=ENV_PASS_PREFIXES, fixed=fixed)
        await write_file(
            self._workspace,
            f"{home}/.qwen/settings.json",
            json.dumps(self.settings(), indent=2),
            root,
            env["PATH"],
        )
        return Launch(argv=self.argv(request), env=env, cumulative_usage=True)
