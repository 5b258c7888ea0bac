"""What forgeline's Codex, Gemini and Qwen adapters cost on top of each bare CLI. Prints
figures, asserts none.

For each provider, the same scripted conversation (a tool call writing ``hello.txt``, then
"done") against its scripted model server on 127.0.0.1, runs alternated in one process:

a) ``<Agent>.execute`` through a plain local workspace (the adapter itself: preparing the
   agent home, the child environment, reading and parsing lines, the one result);
b) the bare CLI: the same command line and environment (taken from the adapter's own
   ``prepare``, so the CLI does the same work) started as an asyncio child whose stdout
   lines are read and dropped.

Medians, their difference and ratio; and, once per provider, a run in the bubblewrap
sandbox, for what the sandbox adds.

Run from the repository root::

    .venv/bin/python -m bench.more_agents [--runs 5] [--providers codex,gemini,qwen]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.gemini_server import GeminiServer  # noqa: E402
from tests.support.openai_server import ScriptedOpenAI, qwen_script  # noqa: E402
from tests.support.responses_server import ResponsesServer  # noqa: E402

from forgeline.adapters.agents.codex import CodexAgent  # noqa: E402
from forgeline.adapters.agents.gemini import GeminiAgent  # noqa: E402
from forgeline.adapters.agents.jsonl import JsonLinesAgent  # noqa: E402
from forgeline.adapters.agents.qwen import QwenAgent  # noqa: E402
from forgeline.adapters.workspace.local import LocalWorkspace  # noqa: E402
from forgeline.adapters.workspace.sandbox import BubblewrapWorkspace  # noqa: E402
from forgeline.domain.agent import AgentRequest, AgentResult, RunStatus  # noqa: E402
from forgeline.logs import Redactor, configure_logging  # noqa: E402

TOOLS = ROOT / "tools" / "node_modules" / ".bin"
PROMPT = "create hello.txt"
MODEL = "fake-model"
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


@contextmanager
def endpoint(provider: str) -> Iterator[dict[str, str]]:
    """The provider's scripted model server; the variables that point its CLI there."""
    with ExitStack() as stack:
        if provider == "codex":
            api = stack.enter_context(ResponsesServer())
            yield {"OPENAI_BASE_URL": api.base_url, "OPENAI_API_KEY": "sk-bench"}
        elif provider == "gemini":
            gemini = stack.enter_context(GeminiServer())
            yield {"GOOGLE_GEMINI_BASE_URL": gemini.base_url, "GEMINI_API_KEY": "bench"}
        else:
            chat = ScriptedOpenAI().start()
            stack.callback(chat.stop)
            chat.script = qwen_script
            yield {"OPENAI_BASE_URL": chat.base_url, "OPENAI_API_KEY": "sk-bench"}


CLASSES: dict[str, type[JsonLinesAgent]] = {
    "codex": CodexAgent,
    "gemini": GeminiAgent,
    "qwen": QwenAgent,
}


def fresh_repo(base: Path, name: str) -> Path:
    """A new git repository under ``base``."""
    path = base / name
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


async def adapter_run(agent: JsonLinesAgent, repo: Path, key: str) -> float:
    """One run through the adapter: wall seconds."""
    request = AgentRequest(prompt=PROMPT, workdir=str(repo), model=MODEL, state_key=key)
    start = time.perf_counter()
    result = None
    async for event in agent.execute(request):
        if isinstance(event.data, AgentResult):
            result = event.data
    wall = time.perf_counter() - start
    assert result is not None
    assert result.status is RunStatus.SUCCEEDED, result.text
    assert (repo / "hello.txt").exists()
    return wall


async def bare_run(agent: JsonLinesAgent, repo: Path, key: str) -> float:
    """The same CLI invocation without forgeline: wall seconds (preparation not timed)."""
    request = AgentRequest(prompt=PROMPT, workdir=str(repo), model=MODEL, state_key=key)
    launch = await agent.prepare(request, agent.home(request))
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *launch.argv,
        cwd=repo,
        env=launch.env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        limit=64 * 1024 * 1024,
    )
    assert proc.stdout is not None
    async for _ in proc.stdout:
        pass
    code = await proc.wait()
    wall = time.perf_counter() - start
    assert code == 0, code
    assert (repo / "hello.txt").exists()
    return wall


def row(label: str, values: list[float]) -> str:
    """One printed line of figures."""
    return (
        f"  {label:<22} median {statistics.median(values) * 1000:7.0f} ms  "
        f"min {min(values) * 1000:6.0f}  max {max(values) * 1000:6.0f}"
    )


async def bench(provider: str, runs: int, base: Path) -> None:
    """Alternated adapter / bare runs of one provider, then one sandboxed run."""
    agent_class = CLASSES[provider]
    with endpoint(provider) as variables:

        def make(workspace: Any, name: str) -> JsonLinesAgent:
            return agent_class(  # type: ignore[call-arg]
                workspace=workspace,
                state_dir=str(base / provider / name),
                binary=str(TOOLS / provider),
                environ={"PATH": BASE_PATH, **variables},
                max_retries=0,
            )

        agent = make(LocalWorkspace(), "state")
        await adapter_run(agent, fresh_repo(base, f"{provider}-warm"), "warm")  # caches
        adapter: list[float] = []
        bare: list[float] = []
        for i in range(runs):
            adapter.append(await adapter_run(agent, fresh_repo(base, f"{provider}-a{i}"), f"a{i}"))
            bare.append(await bare_run(agent, fresh_repo(base, f"{provider}-b{i}"), f"b{i}"))
        sandboxed = make(BubblewrapWorkspace(), "sandboxed")
        boxed = await adapter_run(sandboxed, fresh_repo(base, f"{provider}-s"), "s")
    a, b = statistics.median(adapter), statistics.median(bare)
    print(f"{provider} ({runs} runs each, alternated)")
    print(row("adapter (execute)", adapter))
    print(row("bare CLI", bare))
    print(f"  overhead               {(a - b) * 1000:+7.0f} ms  ratio {a / b:.3f}")
    print(f"  one run in the sandbox {boxed * 1000:7.0f} ms  ratio to bare {boxed / b:.3f}")


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> None:
    """Parse arguments and bench each provider in turn."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--providers", default="codex,gemini,qwen")
    args = parser.parse_args(argv)
    configure_logging("warning", "console", Redactor())
    with tempfile.TemporaryDirectory(prefix="bench-more-agents-") as tmp:
        for provider in args.providers.split(","):
            if not (TOOLS / provider).exists():
                out(f"{provider}: not installed at {TOOLS / provider}; run scripts/setup-tools")
                continue
            asyncio.run(bench(provider, args.runs, Path(tmp)))


if __name__ == "__main__":
    main()
