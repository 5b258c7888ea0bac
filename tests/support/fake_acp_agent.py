"""A tiny scripted ACP agent (JSON-RPC 2.0 over stdio), stdlib only, for the adapter's unit
tests. What it does with a prompt follows keywords in the prompt's text:

- ``GARBLE``: prints a line that is not JSON and one that is not JSON-RPC, then answers;
- ``HUGE``: prints one line of 2 MiB (over the tests' line limit) and waits;
- ``ASK=<kind>``: asks ``session/request_permission`` for a tool of that kind and says the
  answer's outcome in its message (``outcome=selected:<option id>`` or ``cancelled``);
- ``ODD``: an update of a kind no SDK knows, a tool call without its id, a thought, then
  an answer;
- ``EXIT``: writes "boom: model exploded" to stderr and exits 3;
- ``ERROR``: answers the prompt with a JSON-RPC error (a model API's 401);
- ``COST=<usd>``: reports a ``usage_update`` with that cumulative cost, then answers;
- ``HANG``: starts ``perl -e 'sleep 300'`` in a session of its own (as a native child of an
  npm wrapper would be), writes its pid to the file named by ``FAKE_ACP_PIDFILE`` and never
  answers; on ``session/cancel`` it answers ``cancelled`` if ``FAKE_ACP_HONOUR_CANCEL`` is set;
- otherwise: a tool call that writes ``hello.txt`` in the cwd, then "done".

``FAKE_ACP_LOAD=1`` advertises ``loadSession``; a load replays one earlier exchange. The
``FAKE_ACP_SECRET`` variable, if it arrived, is echoed as "secret-arrived" (never its value).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_cwd = "/"
_pending: dict[int, Any] = {}
_answers: dict[int, threading.Event] = {}
_cancelled = threading.Event()


def send(obj: dict[str, Any]) -> None:
    """One message, one line."""
    with _lock:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", **obj}) + "\n")
        sys.stdout.flush()


def update(session: str, body: dict[str, Any]) -> None:
    """A ``session/update`` notification."""
    send({"method": "session/update", "params": {"sessionId": session, "update": body}})


def say(session: str, text: str) -> None:
    """An agent message, in two chunks."""
    half = len(text) // 2
    for part in (text[:half], text[half:]):
        update(
            session,
            {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": part}},
        )


def ask(session: str, kind: str) -> Any:
    """A permission request of ours, answered by the client."""
    request_id = 900
    _answers[request_id] = threading.Event()
    options = [
        {"optionId": "yes", "name": "Allow once", "kind": "allow_once"},
        {"optionId": "always", "name": "Always", "kind": "allow_always"},
        {"optionId": "no", "name": "Reject", "kind": "reject_once"},
    ]
    send(
        {
            "id": request_id,
            "method": "session/request_permission",
            "params": {
                "sessionId": session,
                "toolCall": {"toolCallId": "t1", "title": f"a {kind} tool", "kind": kind},
                "options": options,
            },
        }
    )
    _answers[request_id].wait(30)
    return _pending.pop(request_id, None)


def prompt(msg_id: int, session: str, text: str) -> None:
    """Handle one ``session/prompt`` (in its own thread: it may wait for answers)."""
    if os.environ.get("FAKE_ACP_SECRET"):
        say(session, "secret-arrived ")
    if "GARBLE" in text:
        with _lock:
            sys.stdout.write("this is not json {\n")
            sys.stdout.write("[1, 2, 3]\n")
            sys.stdout.flush()
    if "HUGE" in text:
        with _lock:
            sys.stdout.write('{"jsonrpc": "2.0", "x": "' + "x" * (2 * 1024 * 1024) + '"}\n')
            sys.stdout.flush()
        _cancelled.wait(300)
        return
    if "ODD" in text:
        update(session, {"sessionUpdate": "hologram_update", "beam": 1})
        update(session, {"sessionUpdate": "tool_call", "title": "no id", "kind": "edit"})
        update(
            session,
            {"sessionUpdate": "agent_thought_chunk", "content": {"type": "text", "text": "hmm"}},
        )
        say(session, "odd but fine")
        send({"id": msg_id, "result": {"stopReason": "end_turn"}})
        return
    if "EXIT" in text:
        sys.stderr.write("boom: model exploded\n")
        sys.stderr.flush()
        os._exit(3)
    if "ERROR" in text:
        send(
            {
                "id": msg_id,
                "error": {"code": -32603, "message": "Incorrect API key provided (fake 401)"},
            }
        )
        return
    if "ASK=" in text:
        kind = text.split("ASK=", 1)[1].split(maxsplit=1)[0]
        answer = ask(session, kind) or {}
        outcome = answer.get("outcome") or {}
        said = outcome.get("outcome", "none")
        if said == "selected":
            said += ":" + str(outcome.get("optionId"))
        say(session, f"outcome={said}")
        send({"id": msg_id, "result": {"stopReason": "end_turn"}})
        return
    if "COST=" in text:
        cost = float(text.split("COST=", 1)[1].split(maxsplit=1)[0])
        update(
            session,
            {
                "sessionUpdate": "usage_update",
                "used": 10,
                "size": 1000,
                "cost": {"amount": cost, "currency": "USD"},
            },
        )
        say(session, "spent")
        send({"id": msg_id, "result": {"stopReason": "end_turn"}})
        return
    if "HANG" in text:
        child = subprocess.Popen(["perl", "-e", "sleep 300"], start_new_session=True)
        Path(os.environ["FAKE_ACP_PIDFILE"]).write_text(str(child.pid))
        update(
            session,
            {
                "sessionUpdate": "tool_call",
                "toolCallId": "slow",
                "title": "bash",
                "kind": "execute",
                "status": "in_progress",
                "rawInput": {"command": "perl -e 'sleep 300'"},
            },
        )
        _cancelled.wait(300)
        if os.environ.get("FAKE_ACP_HONOUR_CANCEL"):
            send({"id": msg_id, "result": {"stopReason": "cancelled"}})
        return
    update(
        session,
        {
            "sessionUpdate": "tool_call",
            "toolCallId": "w1",
            "title": "write",
            "kind": "edit",
            "status": "pending",
            "rawInput": {},
        },
    )
    update(
        session,
        {
            "sessionUpdate": "tool_call_update",
            "toolCallId": "w1",
            "status": "in_progress",
            "rawInput": {"filePath": "hello.txt"},
        },
    )
    Path(_cwd, "hello.txt").write_text("hello from fake acp\n")
    update(
        session,
        {
            "sessionUpdate": "tool_call_update",
            "toolCallId": "w1",
            "status": "completed",
            "content": [
                {"type": "content", "content": {"type": "text", "text": "Wrote file successfully."}}
            ],
        },
    )
    update(
        session,
        {
            "sessionUpdate": "plan",
            "entries": [{"content": "write the file", "priority": "high", "status": "completed"}],
        },
    )
    say(session, "done")
    send(
        {
            "id": msg_id,
            "result": {
                "stopReason": "end_turn",
                "usage": {"totalTokens": 110, "inputTokens": 100, "outputTokens": 10},
            },
        }
    )


def main() -> None:
    """Serve requests until stdin closes."""
    global _cwd  # noqa: PLW0603 - one process, one conversation
    for raw in sys.stdin:
        msg = json.loads(raw)
        method, msg_id, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
        if method is None:  # an answer to one of our requests
            _pending[msg_id] = msg.get("result")
            _answers.get(msg_id, threading.Event()).set()
        elif method == "initialize":
            caps = {"loadSession": bool(os.environ.get("FAKE_ACP_LOAD"))}
            info = {"name": "fake-acp", "version": "0.0.7"}
            send(
                {
                    "id": msg_id,
                    "result": {"protocolVersion": 1, "agentCapabilities": caps, "agentInfo": info},
                }
            )
        elif method == "session/new":
            _cwd = params["cwd"]
            send({"id": msg_id, "result": {"sessionId": "sess-1"}})
        elif method == "session/load" and params["sessionId"] == "unknown":
            send({"id": msg_id, "error": {"code": -32602, "message": "Invalid session identifier"}})
        elif method == "session/load":
            _cwd = params["cwd"]
            session = params["sessionId"]
            update(
                session,
                {
                    "sessionUpdate": "user_message_chunk",
                    "content": {"type": "text", "text": "earlier"},
                },
            )
            say(session, "earlier answer")
            update(
                session,
                {
                    "sessionUpdate": "usage_update",
                    "used": 5,
                    "size": 1000,
                    "cost": {"amount": 0.25, "currency": "USD"},
                },
            )
            send({"id": msg_id, "result": {}})
        elif method == "session/prompt":
            text = " ".join(b.get("text", "") for b in params.get("prompt", []))
            threading.Thread(
                target=prompt, args=(msg_id, params["sessionId"], text), daemon=True
            ).start()
        elif method == "session/cancel":
            _cancelled.set()
        elif msg_id is not None:
            send({"id": msg_id, "error": {"code": -32601, "message": "Method not found"}})


if __name__ == "__main__":
    main()
