"""``forgeline agent run``: one agent run in the foreground, its events on stdout.

With ``--json`` each normalized event is one JSON line (``seq`` from 1, ``task_id`` null);
without, a readable live view. The exit code tells how the run ended: 0 succeeded,
1 failed, 124 timed out, 130 cancelled (Ctrl-C or SIGTERM cancel the run cleanly: the agent
and every process it started are gone before the command returns); 2 for a usage error.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Protocol

import typer
from rich.text import Text

from forgeline.domain.agent import (
    DEFAULT_TIMEOUT_S,
    AgentEvent,
    AgentRequest,
    AgentResult,
    ErrorData,
    InitData,
    MessageData,
    RunStatus,
    StatusData,
    ToolResultData,
    ToolUseData,
)
from forgeline.domain.errors import ForgelineError, ValidationError
from forgeline.entrypoints.cli.common import agent_registry, console, echo_error, text
from forgeline.ports.agent import CodeAgent
from forgeline.services.transcript import short, tool_summary

EXIT_CODES = {
    RunStatus.SUCCEEDED: 0,
    RunStatus.FAILED: 1,
    RunStatus.TIMED_OUT: 124,
    RunStatus.CANCELLED: 130,
}

agent_app = typer.Typer(help="Run a coding agent directly (no queue, no git).")


class Printer(Protocol):
    """Shows events as they arrive."""

    def show(self, event: AgentEvent) -> None:
        """Print one event."""
        ...

    def close(self) -> None:
        """Stop any live display."""
        ...


class JsonPrinter:
    """One JSON object per line on stdout, flushed at once (for pipes and scripts)."""

    def show(self, event: AgentEvent) -> None:
        """Write the event's public JSON shape."""
        sys.stdout.write(json.dumps(event.to_dict()) + "\n")
        sys.stdout.flush()

    def close(self) -> None:
        """Nothing to stop."""


class LivePrinter:
    """A rich view: one line per event, a spinner with the elapsed time meanwhile."""

    def __init__(self, provider: str) -> None:
        self._console = console()
        self._provider = provider
        self._started = time.monotonic()
        self._status = self._console.status(text(f"{provider}: starting…"))
        self._status.start()

    def _line(self, *parts: tuple[str, str]) -> None:
        self._console.print(Text.assemble(*(text(value, style) for value, style in parts)))

    def show(self, event: AgentEvent) -> None:
        """Print ``event`` readably; what the agent wrote is shown as plain text."""
        data = event.data
        elapsed = time.monotonic() - self._started
        self._status.update(text(f"{self._provider}: {event.type} · {elapsed:.0f} s"))
        match data:
            case InitData():
                self._line(
                    ("● ", "bold blue"),
                    (f"session {event.session_id} · model {data.model} · cwd {data.cwd}", "dim"),
                )
            case MessageData(role="assistant"):
                self._line(("✦ ", "bold"), (data.text, ""))
            case MessageData():
                self._line(("> ", "yellow"), (data.text, "yellow"))
            case ToolUseData():
                summary = tool_summary(dict(data.input))
                self._line(("⚙ ", "cyan"), (data.name, "bold cyan"), (f" {summary}", "cyan"))
            case ToolResultData():
                style = "red" if data.is_error else "dim"
                self._line(("  ↳ ", style), (short(data.output or "(no output)"), style))
            case StatusData():
                attempt = f" (attempt {data.attempt})" if data.attempt is not None else ""
                self._line(("… ", "dim"), (f"{data.state}{attempt}", "dim"))
            case ErrorData():
                self._line(("✗ ", "bold red"), (f"{data.kind}: {data.message}", "red"))
            case AgentResult():
                self._result(data)

    def _result(self, result: AgentResult) -> None:
        styles = {
            RunStatus.SUCCEEDED: ("✓", "bold green"),
            RunStatus.FAILED: ("✗", "bold red"),
            RunStatus.TIMED_OUT: ("⏱", "bold yellow"),
            RunStatus.CANCELLED: ("■", "bold yellow"),
        }
        mark, style = styles[result.status]
        facts = (
            f" in {result.duration_ms / 1000:.1f} s · {result.num_turns} turns"
            f" · ${result.cost_usd:.4f} · session {result.session_id}"
        )
        self.close()
        self._line((f"{mark} {result.status.value}", style), (facts, "dim"))
        if result.text:
            self._line(("  ", ""), (short(result.text, 400), ""))

    def close(self) -> None:
        """Stop the spinner (idempotent)."""
        self._status.stop()


@contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM set ``stop`` instead of ending the process.

    Held for the whole command, so that a signal (a second Ctrl-C, a supervisor's repeated
    SIGTERM) never cuts short the cancel of the run or the close of its providers, which
    would leave an agent's server running.
    """
    loop = asyncio.get_running_loop()
    handled = (signal.SIGINT, signal.SIGTERM)
    for sig in handled:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


async def run_agent(
    agent: CodeAgent, request: AgentRequest, printer: Printer, stop: asyncio.Event
) -> AgentResult:
    """Run ``request`` on ``agent``, numbering and printing its events.

    ``stop`` (see :func:`stop_on_signals`) cancels the run through ``agent.cancel``, the
    port's clean path, so the stream still ends with its ``result`` event, ``cancelled``.
    """

    async def cancel_on_stop() -> None:
        await stop.wait()
        await agent.cancel(request.run_id)

    canceller = asyncio.create_task(cancel_on_stop(), name="agent-run-cancel")
    result: AgentResult | None = None
    seq = 0
    try:
        async for event in agent.execute(request):
            seq += 1
            numbered = event.numbered(seq, None)
            printer.show(numbered)
            if isinstance(numbered.data, AgentResult):
                result = numbered.data
    finally:
        printer.close()
        if not stop.is_set():
            canceller.cancel()
        # A cancel under way is bounded by the port (5 s): it finishes before we go on.
        await asyncio.wait([canceller])
    if result is None:  # a broken adapter; the port promises a result event
        return AgentResult(status=RunStatus.FAILED, text="the agent ended without a result")
    return result


@agent_app.command("run")
def run(
    prompt: Annotated[str, typer.Option("--prompt", help="What the agent should do.")],
    workdir: Annotated[Path, typer.Option("--workdir", help="The directory the agent works in.")],
    provider: Annotated[
        str | None, typer.Option("--provider", help="Agent provider (default: the first).")
    ] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue this session id.")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name or alias.")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Wall-clock limit in seconds.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
) -> None:
    """Run one agent in WORKDIR and stream its events; the exit code tells how it ended."""
    from forgeline.bootstrap import check_sandbox
    from forgeline.logs import Redactor, configure_logging
    from forgeline.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, Redactor())

    async def main() -> int:
        await check_sandbox(settings)
        stop = asyncio.Event()
        with stop_on_signals(stop):
            async with agent_registry(settings) as registry:
                try:
                    agent = registry.get(provider)
                    request = AgentRequest(
                        prompt=prompt,
                        workdir=str(workdir.expanduser().resolve()),
                        provider=agent.name,
                        model=model,
                        timeout_s=timeout if timeout is not None else DEFAULT_TIMEOUT_S,
                        resume_session=resume,
                    ).validate()
                except ForgelineError as exc:
                    echo_error(exc.message)
                    return 2
                if not workdir.is_dir():
                    echo_error(f"{workdir} is not a directory")
                    return 2
                printer: Printer = JsonPrinter() if json_out else LivePrinter(agent.name)
                result = await run_agent(agent, request, printer, stop)
                return EXIT_CODES[result.status]

    try:
        code = asyncio.run(main())
    except ForgelineError as exc:  # e.g. a provider that cannot run here at all
        echo_error(exc.message)
        code = 2 if isinstance(exc, ValidationError) else 1
    raise typer.Exit(code)
