"""CodexAgent: the OpenAI Codex CLI, one ``codex exec --json`` process per run.

The shared JSON-lines machinery (:mod:`forgeline.adapters.agents.jsonl`) runs it; this
module supplies the command line, the environment and the parser. What is Codex's own:

- approvals and Codex's own sandbox are bypassed
  (``--dangerously-bypass-approvals-and-sandbox``): forgeline's sandbox is the boundary,
  and Codex's would need namespaces the sandbox does not give it;
- ``CODEX_HOME`` (sessions, its databases) and ``HOME`` live in the project's agent home,
  so a later build resumes the thread with ``codex exec resume <thread id>``;
- when the child's environment names ``OPENAI_BASE_URL`` (forgeline's own, or a build's
  credential), the model endpoint is given as a provider entry on the command line
  (``-c model_providers.forgeline={…, wire_api="responses"}``) with bounded retries, the
  key read from ``OPENAI_API_KEY``; without it, Codex's built-in OpenAI provider is used;
- usage in ``turn.completed`` is cumulative over a resumed thread: the machinery keeps the
  thread's total and reports the run's share; Codex reports no dollars, so the cost is
  estimated from the price table.
"""

from __future__ import annotations

import json

from forgeline.adapters.agents.codex.parser import CodexParser
from forgeline.adapters.agents.jsonl import JsonLinesAgent, Launch
from forgeline.domain.agent import AgentProvider, AgentRequest

#: The name of the provider entry pointing at ``OPENAI_BASE_URL``.
PROVIDER_ENTRY = "forgeline"


def _toml(value: str) -> str:
    """``value`` as a TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(value)


class CodexAgent(JsonLinesAgent):
    """Drives ``codex exec`` through a :class:`Workspace` (see the module docstring).

    ``<state_dir>/<key>/codex`` is the CLI's ``CODEX_HOME``, ``<state_dir>/<key>/home`` its
    ``HOME``. ``max_retries`` bounds Codex's request and stream retries against a configured
    endpoint. The other options are :class:`JsonLinesAgent`'s.
    """

    label = "codex"
    #: The endpoint and key of an operator's gateway, and Codex's own tuning.
    env_prefixes = ("OPENAI_", "CODEX_")
    #: The only mode ``codex exec`` runs in here: every command approved, no Codex sandbox.
    permission_modes = ("bypassPermissions",)

    @property
    def name(self) -> str:
        """``codex``."""
        return AgentProvider.CODEX.value

    def new_parser(self, request: AgentRequest) -> CodexParser:
        """Codex's parser; the init event names the requested model and the workdir."""
        return CodexParser(
            model=request.model, cwd=request.workdir, provider=self.name, raw=self._raw_events
        )

    def argv(self, request: AgentRequest, env: dict[str, str]) -> list[str]:
        """The command line of one run (a resume when the request names a thread)."""
        argv = [
            self._binary,
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",
            "-C",
            request.workdir,
        ]
        base_url = env.get("OPENAI_BASE_URL")
        if base_url:
            entry = (
                f"{{name={_toml(PROVIDER_ENTRY)},base_url={_toml(base_url)},"
                f'env_key="OPENAI_API_KEY",wire_api="responses",'
                f"request_max_retries={self._max_retries},"
                f"stream_max_retries={self._max_retries}}}"
            )
            argv += [
                "-c",
                f"model_provider={_toml(PROVIDER_ENTRY)}",
                "-c",
                f"model_providers.{PROVIDER_ENTRY}={entry}",
            ]
        if request.model:
            argv += ["-m", request.model]
        if request.resume_session:
            # After "--": neither the thread id nor the prompt is taken for an option.
            return [*argv, "resume", "--", request.resume_session, request.prompt]
        return [*argv, "--", request.prompt]

    async def prepare(self, request: AgentRequest, root: str) -> Launch:
        """``HOME`` and ``CODEX_HOME`` under ``root``."""
        fixed = {"HOME": f"{root}/home", "CODEX_HOME": f"{root}/codex", "NO_COLOR": "1"}
        env = self.child_env(request, fixed)
        await self._workspace.ensure_dir(env["HOME"])
        await self._workspace.ensure_dir(env["CODEX_HOME"])
        return Launch(argv=self.argv(request, env), env=env, cumulative_usage=True)
