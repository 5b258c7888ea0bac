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
- sessions are filed by working directory (``~/.qwen/projects/<cwd as Claude Code names
  it>/chats``), and every attempt of a build has a checkout of its own: a resumed
  session's file is first copied to the new checkout's directory;
- usage is cumulative over a resumed session: the machinery keeps the session's total and
  reports the run's share; Qwen reports no dollars, so the cost is estimated from the
  price table.

Pinned at 0.15.10, the newest version that runs on Node 20 (0.24.x needs Node ≥ 22).
"""

from __future__ import annotations

import json
from typing import Any

from forgeline.adapters.agents.claude_code.agent import project_dir_name
from forgeline.adapters.agents.jsonl import SESSION_ID, JsonLinesAgent, Launch
from forgeline.adapters.agents.qwen.parser import QwenParser
from forgeline.domain.agent import AgentProvider, AgentRequest


class QwenAgent(JsonLinesAgent):
    """Drives ``qwen`` through a :class:`Workspace` (see the module docstring).

    ``<state_dir>/<key>/home`` is the CLI's ``HOME``. ``max_retries`` bounds the OpenAI
    SDK's retries of a request. The other options are :class:`JsonLinesAgent`'s.
    """

    label = "qwen"
    #: The endpoint, key and model, and the CLI's own variables.
    env_prefixes = ("OPENAI_", "QWEN_")
    #: The only mode headless runs use here: every tool call approved.
    permission_modes = ("yolo",)

    @property
    def name(self) -> str:
        """``qwen``."""
        return AgentProvider.QWEN.value

    def new_parser(self, request: AgentRequest) -> QwenParser:
        """Claude's parser, adapted (see :class:`QwenParser`)."""
        return QwenParser(provider=self.name, raw=self._raw_events)

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
        env = self.child_env(request, fixed)
        await self.write_settings(root, "home/.qwen/settings.json", self.settings())
        if request.resume_session and SESSION_ID.fullmatch(request.resume_session):
            # Sessions are filed by working directory, as Claude Code names it.
            projects = f"{home}/.qwen/projects"
            name = project_dir_name(request.workdir)
            # The CLI refuses a session whose first record names another cwd: rewrite it.
            cwd = json.dumps(request.workdir).replace("\\", "\\\\").replace("&", "\\&")
            cwd = cwd.replace("|", "\\|")
            rewrite = ["sed", "-i", f'1s|"cwd":"[^"]*"|"cwd":{cwd}|']
            relative = f"chats/{request.resume_session}.jsonl"
            await self.carry_file(root, projects, relative, name, then=rewrite)
        return Launch(argv=self.argv(request), env=env, cumulative_usage=True)
