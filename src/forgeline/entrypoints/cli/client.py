"""CLI commands that talk to a running forgeline over its HTTP API, through the typed client
(:mod:`forgeline.client`): ``build``, ``task``, ``project``, ``token list|revoke``. The
server is ``FORGELINE_URL`` (default ``http://<host>:<port>`` of the settings); the token
is ``FORGELINE_TOKEN``, else the admin token file of the data dir."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import BaseModel
from rich.table import Column, Table
from rich.text import Text

from forgeline.domain.clock import format_time
from forgeline.domain.task import TaskStatus
from forgeline.entrypoints.cli.common import (
    JsonOption,
    clean,
    console,
    echo_error,
    fail_on_errors,
    text,
)
from forgeline.services.auth import ADMIN_TOKEN_FILE
from forgeline.settings import Settings

if TYPE_CHECKING:
    from forgeline.client import Client
    from forgeline.entrypoints.api.schemas import Accepted, EventOut, TaskOut

task_app = typer.Typer(help="List, show, follow, cancel and retry tasks.", no_args_is_help=True)
project_app = typer.Typer(help="Create, list, change and delete projects.", no_args_is_help=True)

#: Exit codes of ``build --wait`` and ``task events``: like ``agent run``.
EXIT = {"completed": 0, "failed": 1, "cancelled": 130}


@contextmanager
def connected() -> Iterator[Client]:
    """The API client of this environment; an error it raises ends the command with
    ``error: <message>`` and exit code 1."""
    # Imported here, not at the top: only commands that talk to the API pay for httpx and
    # the API's models, not every start of the CLI.
    from forgeline.client import Client

    settings = Settings()
    base = os.environ.get("FORGELINE_URL") or f"http://{settings.host}:{settings.port}"
    token = os.environ.get("FORGELINE_TOKEN")
    if not token:
        path = settings.data_dir / ADMIN_TOKEN_FILE
        token = path.read_text().strip() if path.exists() else ""
    if not token:
        echo_error("no API token: set FORGELINE_TOKEN (see `forgeline token create`)")
        sys.exit(1)
    with fail_on_errors(), Client(base, token) as client:
        yield client


def _print_json(answer: BaseModel | Sequence[BaseModel]) -> None:
    if isinstance(answer, BaseModel):
        typer.echo(answer.model_dump_json(by_alias=True))
    else:
        typer.echo(json.dumps([item.model_dump(mode="json", by_alias=True) for item in answer]))


def _parse_pairs(pairs: list[str], option: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{option} takes key=value, got {pair!r}")
        parsed[key] = value
    return parsed


def _parse_vars(pairs: list[str], option: str = "--var") -> dict[str, Any]:
    """``key=value`` pairs; values that read as JSON (numbers, booleans) are typed."""
    variables: dict[str, Any] = {}
    for key, value in _parse_pairs(pairs, option).items():
        try:
            variables[key] = json.loads(value)
        except json.JSONDecodeError:
            variables[key] = value
    return variables


class Progress:
    """A live view of a build: current step, tool calls, cost so far, last message."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.step = "queued"
        self.tools = 0
        self.cost = 0.0
        self.last = ""
        self.lines: list[str] = []

    def feed(self, event: EventOut) -> None:
        """Take one event into the view."""
        data = event.data
        kind = event.type
        if kind == "status" and data.get("state") == "step":
            self.step = f"{data.get('step')} ({data.get('phase')})"
            if data.get("phase") == "finished":
                step, outcome = data.get("step"), data.get("outcome", "")
                self.lines.append(f"✓ {step} {outcome} {data.get('duration_ms', '')} ms")
        elif kind == "tool_use":
            self.tools += 1
            self.lines.append(f"→ {data.get('name')} {json.dumps(data.get('input'))[:80]}")
        elif kind == "message" and data.get("role") == "assistant":
            self.last = str(data.get("text", ""))[:200]
        elif kind == "error":
            self.lines.append(f"! {data.get('kind')}: {data.get('message')}")
        elif kind == "result":
            self.cost = float(data.get("cost_usd") or 0.0)
            self.step = f"finished: {data.get('status')}"

    def render(self) -> Table:
        """The view as a rich table (what the events said is shown as plain text)."""
        rows = [
            ("task", self.task_id),
            ("step", self.step),
            ("tools", str(self.tools)),
            ("cost", f"${self.cost:.4f}"),
        ]
        if self.last:
            rows.append(("agent", self.last))
        rows += [("", line) for line in self.lines[-8:]]
        table = Table.grid(padding=(0, 1))
        for label, value in rows:
            table.add_row(Text(label, style="bold"), text(value))
        return table


def _skipped(data: str) -> None:
    # sys.stderr, not typer.echo: a live view redirects it and prints it above itself.
    sys.stderr.write(f"warning: skipped a message that is not an event: {clean(data[:200])}\n")


def _follow(api: Client, task_id: str, *, as_json: bool) -> int:
    """Print the task's events until its result; the exit code of its final status."""
    if as_json:
        for event in api.events(task_id, on_garbage=_skipped):
            _print_json(event)
    else:
        from rich.live import Live

        progress = Progress(task_id)
        with Live(progress.render(), console=console(stderr=True)) as live:
            for event in api.events(task_id, on_garbage=_skipped):
                progress.feed(event)
                live.update(progress.render())
    task = api.get_task(task_id)
    if not as_json:
        _show_task(task)
    return EXIT.get(task.status.value, 1)


def _submitted(api: Client, accepted: Accepted, *, wait: bool, as_json: bool) -> int:
    """Print a queued build (its id, or its answer as JSON); with ``wait``, follow it to its
    end. The command's exit code."""
    if not wait:
        if as_json:
            _print_json(accepted)
        else:
            typer.echo(clean(accepted.task_id))
        return 0
    if not as_json:
        typer.echo(clean(f"queued {accepted.task_id}"), err=True)
    return _follow(api, accepted.task_id, as_json=as_json)


def _show_task(task: TaskOut) -> None:
    out = console()
    out.print(text(task.task_id, "bold"), text(f"{task.status.value} (attempts {task.attempts})"))
    result = task.result
    if result is None:
        return
    for key, value in result.artifacts.model_dump(exclude_none=True).items():
        out.print(text(f"  {key}: {value}"))
    if result.error:
        out.print(text(f"  error: {result.error}"))


def build(
    project: Annotated[str, typer.Argument(help="Project name.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What the agent should do.")],
    provider: Annotated[str | None, typer.Option(help="Agent provider.")] = None,
    model: Annotated[str | None, typer.Option(help="Model for the agent.")] = None,
    no_deploy: Annotated[
        bool, typer.Option("--no-deploy", help="Push to a review branch, not the default one.")
    ] = False,
    callback_url: Annotated[str | None, typer.Option(help="Where to POST the outcome.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Agent time limit, seconds.")] = None,
    continue_session: Annotated[
        bool,
        typer.Option(
            "--continue",
            help="Continue the agent session of the project's last completed build.",
        ),
    ] = False,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue this agent session id.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the build live to its end.")] = False,
    idempotency_key: Annotated[str | None, typer.Option(help="Same key, same task.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Submit a build; with --wait, follow it and exit with its outcome."""
    from forgeline.entrypoints.api.schemas import BuildIn

    optional: dict[str, Any] = {
        "provider": provider,
        "model": model,
        "callback_url": callback_url,
        "timeout_s": timeout,
        "resume_session": resume,
    }
    # Constructed, not validated: the server judges requests, in its own words.
    spec = BuildIn.model_construct(
        prompt=prompt,
        auto_deploy=not no_deploy,
        continue_session=continue_session,
        **{key: value for key, value in optional.items() if value is not None},
    )
    with connected() as api:
        accepted = api.build(project, spec, idempotency_key=idempotency_key)
        code = _submitted(api, accepted, wait=wait, as_json=json_out)
    raise typer.Exit(code)


@task_app.command("list")
def task_list(
    project: Annotated[str | None, typer.Option(help="Only this project's builds.")] = None,
    status: Annotated[TaskStatus | None, typer.Option(help="Only tasks in this status.")] = None,
    since: Annotated[
        datetime | None,
        typer.Option(help="Only tasks created since (ISO 8601; local time without a zone)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="At most this many.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="The next_cursor of a page.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Build tasks, newest first (one page; --json shows next_cursor for the next)."""
    if since is not None and since.tzinfo is None:
        since = since.astimezone()
    with connected() as api:
        page = api.list_tasks(
            project=project, status=status, since=since, limit=limit, cursor=cursor
        )
    if json_out:
        _print_json(page)
        return
    # Ids never wrap (they are copied into the next command); the prompt gives way.
    table = Table(
        Column("task", no_wrap=True),
        "project",
        "status",
        Column("created (UTC)", no_wrap=True),
        Column("prompt", no_wrap=True, overflow="ellipsis"),
    )
    for task in page.items:
        prompt = task.spec.prompt if task.spec else ""
        cells = (
            task.task_id,
            task.project_id or "",
            task.status.value,
            task.created_at.strftime("%Y-%m-%d %H:%M"),
            " ".join(prompt.split())[:60],
        )
        table.add_row(*map(text, cells))
    console().print(table)
    if page.next_cursor is not None:
        typer.echo(f"more: --cursor {page.next_cursor}", err=True)


@task_app.command("show")
def task_show(task_id: str, json_out: JsonOption = False) -> None:
    """Status, attempts, timestamps, result and callbacks of a task."""
    with connected() as api:
        task = api.get_task(task_id)
    if json_out:
        _print_json(task)
    else:
        _show_task(task)


@task_app.command("events")
def task_events(
    task_id: str,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Stream live.")] = True,
    json_out: JsonOption = False,
) -> None:
    """The task's events (live until its result by default)."""
    with connected() as api:
        if follow:
            code = _follow(api, task_id, as_json=json_out)
            raise typer.Exit(code)
        events = api.events_so_far(task_id)
    if json_out:
        _print_json(events)
        return
    for event in events:
        line = f"{event.seq:>4} {event.type:<11} {json.dumps(event.data)[:160]}"
        typer.echo(clean(line))


@task_app.command("log")
def task_log(task_id: str) -> None:
    """The task's events as a plain-text transcript."""
    with connected() as api:
        transcript = api.task_log(task_id)
    typer.echo(clean(transcript), nl=False)


@task_app.command("diff")
def task_diff(task_id: str) -> None:
    """The patch of the commit the build pushed (read from the project's remote)."""
    with connected() as api:
        patch = api.task_diff(task_id)
    typer.echo(clean(patch), nl=False)


@task_app.command("cancel")
def task_cancel(task_id: str, json_out: JsonOption = False) -> None:
    """Cancel a queued or running task."""
    with connected() as api:
        task = api.cancel_task(task_id)
    if json_out:
        _print_json(task)
    else:
        requested = " (cancel requested)" if task.cancel_requested else ""
        typer.echo(clean(f"{task.task_id} {task.status.value}{requested}"))


@task_app.command("retry")
def task_retry(
    task_id: str,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the new build to its end.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Run a finished build again (same spec): a new task, linked to this one."""
    with connected() as api:
        code = _submitted(api, api.retry_task(task_id), wait=wait, as_json=json_out)
    raise typer.Exit(code)


@project_app.command("create")
def project_create(
    name: str,
    template: Annotated[str | None, typer.Option(help="Template to start from.")] = None,
    var: Annotated[
        list[str] | None, typer.Option("--var", help="Template variable key=value.")
    ] = None,
    repo_url: Annotated[
        str | None, typer.Option(help="Existing remote (default: embedded).")
    ] = None,
    credential: Annotated[
        list[str] | None, typer.Option("--credential", help="ENV_VAR=credential-name for builds.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Create a project (rendering a template into its new repository)."""
    from forgeline.entrypoints.api.schemas import ProjectIn

    body = ProjectIn.model_construct(
        name=name,
        template=template,
        variables=_parse_vars(var or []),
        repo_url=repo_url,
        credentials=_parse_pairs(credential or [], "--credential"),
    )
    with connected() as api:
        project = api.create_project(body)
    if json_out:
        _print_json(project)
    else:
        typer.echo(clean(f"{project.name} {project.state} {project.repo_url}"))


@project_app.command("list")
def project_list(json_out: JsonOption = False) -> None:
    """Every project (all pages)."""
    with connected() as api:
        projects = list(api.all_projects())
    if json_out:
        _print_json(projects)
        return
    table = Table("name", "state", "template", "default provider", "repository")
    for p in projects:
        cells = (p.name, p.state, p.template or "", p.default_provider or "", p.repo_url)
        table.add_row(*map(text, cells))
    console().print(table)


@project_app.command("show")
def project_show(name: str, json_out: JsonOption = False) -> None:
    """One project."""
    with connected() as api:
        project = api.get_project(name)
    if json_out:
        _print_json(project)
    else:
        for key, value in project.model_dump(mode="json").items():
            typer.echo(clean(f"{key}: {value}"))


@project_app.command("update")
def project_update(
    name: str,
    credential: Annotated[
        list[str] | None,
        typer.Option(
            "--credential", help="ENV_VAR=credential-name for builds; ENV_VAR= removes it."
        ),
    ] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option("--setting", help="key=value (JSON values typed); key= removes it."),
    ] = None,
    provider: Annotated[
        str | None, typer.Option(help="Default agent provider ('' clears it).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Default model ('' clears it).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Change a project's credential mapping, settings, default provider or model."""
    from forgeline.entrypoints.api.schemas import ProjectPatch

    patch: dict[str, Any] = {}
    if credential:
        pairs = _parse_pairs(credential, "--credential")
        patch["credentials"] = {var: cred or None for var, cred in pairs.items()}
    if setting:
        values = _parse_vars(setting, "--setting")
        patch["settings"] = {key: None if value == "" else value for key, value in values.items()}
    if provider is not None:
        patch["default_provider"] = provider or None
    if model is not None:
        patch["default_model"] = model or None
    if not patch:
        raise typer.BadParameter("nothing to change: give --credential, --setting, --provider …")
    with connected() as api:
        project = api.update_project(name, ProjectPatch.model_construct(**patch))
    if json_out:
        _print_json(project)
    else:
        typer.echo(clean(f"updated {project.name}"))


@project_app.command("delete")
def project_delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Delete a project: its record, its own credentials and agent sessions (its repository,
    tasks and their events stay). Refused while a build of it is queued or running."""
    if not yes and not typer.confirm(f"Delete project {clean(name)!r}?", err=True):
        raise typer.Exit(1)
    with connected() as api:
        deleted = api.delete_project(name)
    if json_out:
        _print_json(deleted)
        return
    typer.echo(clean(f"deleted {deleted.name}"))
    for what in deleted.removed:
        typer.echo(clean(f"  removed: {what}"))
    for what in deleted.kept:
        typer.echo(clean(f"  kept: {what}"))


def token_list(json_out: JsonOption = False) -> None:
    """API tokens: name, role, projects, created, last used (never the token)."""
    with connected() as api:
        tokens = api.list_tokens()
    if json_out:
        _print_json(tokens)
        return
    table = Table(Column("id", no_wrap=True), "name", "role", "projects", "created", "last used")
    for token in tokens:
        cells = (
            token.id,
            token.name,
            token.role,
            ", ".join(token.projects) if token.projects is not None else "all",
            format_time(token.created_at),
            format_time(token.last_used_at) if token.last_used_at else "never",
        )
        table.add_row(*map(text, cells))
    console().print(table)


def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (see `token list`).")],
) -> None:
    """Revoke an API token: it is refused from now on."""
    with connected() as api:
        api.revoke_token(token_id)
    typer.echo(clean(f"revoked {token_id}"))
