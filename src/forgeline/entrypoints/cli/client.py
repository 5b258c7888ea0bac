"""CLI commands that talk to a running forgeline over its HTTP API: ``build``, ``task``,
``project``. The server is ``FORGELINE_URL`` (default ``http://<host>:<port>`` of the
settings); the token is ``FORGELINE_TOKEN``, else the admin token file of the data dir."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.table import Table
from rich.text import Text

from forgeline.entrypoints.cli.common import JsonOption, clean, console, echo_error, text
from forgeline.services.auth import ADMIN_TOKEN_FILE
from forgeline.settings import Settings

task_app = typer.Typer(help="Show, follow and cancel tasks.", no_args_is_help=True)
project_app = typer.Typer(help="Create and list projects.", no_args_is_help=True)

if TYPE_CHECKING:
    import httpx

#: How often in a row a broken event stream is resumed, with no event in between, before
#: the command gives up.
SSE_RECONNECTS = 5
#: Longest silence on an event stream (the server sends a keep-alive after at most 30 s
#: of it, ``FORGELINE_SSE_KEEPALIVE_S``, 15 s by default).
SSE_READ_TIMEOUT_S = 45.0
#: Exit codes of ``build --wait`` and ``task events``: like ``agent run``.
EXIT = {"completed": 0, "failed": 1, "cancelled": 130}


class Api:
    """A small client of forgeline's API; errors become a message and exit code 1."""

    def __init__(self) -> None:
        # httpx is imported here, not at the top: only commands that talk to the API pay
        # for it, not every start of the CLI.
        import httpx

        settings = Settings()
        self.base = os.environ.get("FORGELINE_URL") or f"http://{settings.host}:{settings.port}"
        token = os.environ.get("FORGELINE_TOKEN")
        if not token:
            path = settings.data_dir / ADMIN_TOKEN_FILE
            token = path.read_text().strip() if path.exists() else ""
        if not token:
            _die("no API token: set FORGELINE_TOKEN (see `forgeline token create`)")
        self.client = httpx.Client(
            base_url=self.base,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(60.0),
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; the decoded JSON answer, or exit with the API's error message."""
        import httpx

        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            _die(f"cannot reach forgeline at {self.base}: {exc}")
        if response.status_code >= 400:
            _die(_error_message(response))
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            _die(f"{self.base} answered {method} {path} with something that is not JSON")

    def events(self, task_id: str) -> Iterator[dict[str, Any]]:
        """The task's events until its ``result``. A broken stream is resumed where it
        stopped (``Last-Event-ID``), at once if the server dropped it for reading too
        slowly; the command gives up after :data:`SSE_RECONNECTS` breaks in a row with no
        event in between."""
        import httpx
        from httpx_sse import connect_sse

        after = 0
        failures = 0
        # Reads wait for more than one keep-alive period of the server.
        timeout = httpx.Timeout(60.0, read=SSE_READ_TIMEOUT_S)
        while True:
            headers = {"Last-Event-ID": str(after)} if after else {}
            try:
                with connect_sse(
                    self.client,
                    "GET",
                    f"/tasks/{task_id}/events",
                    headers=headers,
                    timeout=timeout,
                ) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        _die(_error_message(source.response))
                    for sse in source.iter_sse():
                        if sse.event == "dropped":
                            break
                        event = _decode_event(sse.data)
                        if event is not None:
                            after, failures = event["seq"], 0
                            yield event
                    else:
                        return
            except httpx.HTTPError as exc:
                if failures == SSE_RECONNECTS:
                    _die(f"event stream broke: {exc}")
                time.sleep(min(2**failures, 10))
                failures += 1


def _decode_event(data: str) -> dict[str, Any] | None:
    """One SSE message's ``data`` as a forgeline event; None for anything else.

    httpx-sse hands on a comment-only block (the server's ``: keep-alive``) as a message
    with empty data, where the SSE spec drops it: skipped silently. Anything else that is
    not an event (a proxy's garbage, a wrong ``FORGELINE_URL``) is skipped with a warning,
    so that following a build never ends while the build goes on.
    """
    if not data:
        return None
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):  # nested past the decoder's depth: garbage too
        event = None
    if (
        isinstance(event, dict)
        and isinstance(event.get("seq"), int)
        and isinstance(event.get("type"), str)
        and isinstance(event.get("data"), dict)
    ):
        return event
    # sys.stderr, not typer.echo: a live view redirects it and prints it above itself.
    sys.stderr.write(f"warning: skipped a message that is not an event: {clean(data[:200])}\n")
    return None


def _error_message(response: httpx.Response) -> str:
    """The API's error envelope as one line, or the start of whatever else came back."""
    try:
        error = response.json()["error"]
        return f"{error['message']} ({error['code']}, HTTP {response.status_code})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:300]}"


def _die(message: str) -> NoReturn:
    echo_error(message)
    sys.exit(1)


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=None))


def _parse_pairs(pairs: list[str], option: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{option} takes key=value, got {pair!r}")
        parsed[key] = value
    return parsed


def _parse_vars(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values that read as JSON (numbers, booleans) are typed."""
    variables: dict[str, Any] = {}
    for key, value in _parse_pairs(pairs, "--var").items():
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

    def feed(self, event: dict[str, Any]) -> None:
        """Take one event into the view."""
        data = event["data"]
        kind = event["type"]
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


def _follow(api: Api, task_id: str, *, as_json: bool) -> int:
    """Print the task's events until its result; the exit code of its final status."""
    if as_json:
        for event in api.events(task_id):
            _print_json(event)
    else:
        from rich.live import Live

        progress = Progress(task_id)
        with Live(progress.render(), console=console(stderr=True)) as live:
            for event in api.events(task_id):
                progress.feed(event)
                live.update(progress.render())
    task = api.call("GET", f"/tasks/{task_id}")
    if not as_json:
        _show_task(task)
    return EXIT.get(task["status"], 1)


def _show_task(task: dict[str, Any]) -> None:
    result = task.get("result") or {}
    out = console()
    out.print(
        text(task["task_id"], "bold"), text(f"{task['status']} (attempts {task['attempts']})")
    )
    for key, value in (result.get("artifacts") or {}).items():
        out.print(text(f"  {key}: {value}"))
    if result.get("error"):
        out.print(text(f"  error: {result['error']}"))


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
    wait: Annotated[bool, typer.Option("--wait", help="Follow the build live to its end.")] = False,
    idempotency_key: Annotated[str | None, typer.Option(help="Same key, same task.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Submit a build; with --wait, follow it and exit with its outcome."""
    api = Api()
    optional = {
        "provider": provider,
        "model": model,
        "callback_url": callback_url,
        "timeout_s": timeout,
    }
    body: dict[str, Any] = {
        "prompt": prompt,
        "auto_deploy": not no_deploy,
        **{key: value for key, value in optional.items() if value is not None},
    }
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    accepted = api.call("POST", f"/project/{project}/build", json=body, headers=headers)
    if not wait:
        if json_out:
            _print_json(accepted)
        else:
            typer.echo(clean(accepted["task_id"]))
        return
    if not json_out:
        typer.echo(clean(f"queued {accepted['task_id']}"), err=True)
    raise typer.Exit(_follow(api, accepted["task_id"], as_json=json_out))


@task_app.command("show")
def task_show(task_id: str, json_out: JsonOption = False) -> None:
    """Status, attempts, timestamps, result and callbacks of a task."""
    task = Api().call("GET", f"/tasks/{task_id}")
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
    api = Api()
    if not follow:
        events = api.call("GET", f"/tasks/{task_id}/events", params={"format": "json"})
        if json_out:
            _print_json(events)
        else:
            for event in events:
                line = f"{event['seq']:>4} {event['type']:<11} {json.dumps(event['data'])[:160]}"
                typer.echo(clean(line))
        return
    raise typer.Exit(_follow(api, task_id, as_json=json_out))


@task_app.command("cancel")
def task_cancel(task_id: str, json_out: JsonOption = False) -> None:
    """Cancel a queued or running task."""
    task = Api().call("POST", f"/tasks/{task_id}/cancel")
    if json_out:
        _print_json(task)
    else:
        requested = " (cancel requested)" if task.get("cancel_requested") else ""
        typer.echo(clean(f"{task['task_id']} {task['status']}{requested}"))


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
    body: dict[str, Any] = {"name": name, "variables": _parse_vars(var or [])}
    if template:
        body["template"] = template
    if repo_url:
        body["repo_url"] = repo_url
    if credential:
        body["credentials"] = _parse_pairs(credential, "--credential")
    project = Api().call("POST", "/projects", json=body)
    if json_out:
        _print_json(project)
    else:
        typer.echo(clean(f"{project['name']} {project['state']} {project['repo_url']}"))


@project_app.command("list")
def project_list(json_out: JsonOption = False) -> None:
    """Every project."""
    projects = Api().call("GET", "/projects")
    if json_out:
        _print_json(projects)
        return
    table = Table("name", "state", "template", "repository")
    for p in projects:
        table.add_row(*(text(p[key] or "") for key in ("name", "state", "template", "repo_url")))
    console().print(table)


@project_app.command("show")
def project_show(name: str, json_out: JsonOption = False) -> None:
    """One project."""
    project = Api().call("GET", f"/projects/{name}")
    if json_out:
        _print_json(project)
    else:
        for key, value in project.items():
            typer.echo(clean(f"{key}: {value}"))
