"""A scripted Gemini API on 127.0.0.1, for driving the real ``gemini`` CLI.

The CLI (pointed here by ``GOOGLE_GEMINI_BASE_URL``) calls
``POST /v1beta/models/<model>:streamGenerateContent?alt=sse`` and reads SSE ``data:`` lines,
each a ``GenerateContentResponse`` (``candidates[0].content.parts`` with ``text`` or a
``functionCall``, ``finishReason``, ``usageMetadata``); side requests without streaming go
to ``:generateContent`` and get the same answer as one JSON document. What the "model"
answers is a *script*, a function from the :class:`GeminiRequest` to a :data:`Reply`; the
default one follows the prompt keywords of :mod:`tests.support.responses_server`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tests.support.responses_server import Call, Failure, Hang, Reply, Text
from tests.support.scripted_http import Exchange, ScriptedServer

MODEL = "fake-model"
PROMPT_TOKENS = 100
CANDIDATE_TOKENS = 10

_STATUS = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED"}


@dataclass(frozen=True)
class GeminiRequest:
    """One ``generateContent`` call as the server saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def streaming(self) -> bool:
        """True for ``:streamGenerateContent``."""
        return ":streamGenerateContent" in self.path

    @property
    def contents(self) -> list[dict[str, Any]]:
        """The conversation's turns."""
        contents = self.body.get("contents")
        return [c for c in contents if isinstance(c, dict)] if isinstance(contents, list) else []

    @property
    def is_main(self) -> bool:
        """True for the agent's turn (tools declared), not a side request of the CLI."""
        return bool(self.body.get("tools"))

    def _parts(self, turn: dict[str, Any]) -> list[dict[str, Any]]:
        parts = turn.get("parts")
        return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []

    @property
    def after_tool(self) -> bool:
        """True when the last turn carries a function's response."""
        return bool(self.contents) and any(
            "functionResponse" in p for p in self._parts(self.contents[-1])
        )

    @property
    def prompt(self) -> str:
        """The text of the last user turn."""
        for turn in reversed(self.contents):
            if turn.get("role") == "user":
                texts = [str(p["text"]) for p in self._parts(turn) if "text" in p]
                if texts:
                    return texts[-1]
        return ""

    @property
    def resumed(self) -> bool:
        """True when an earlier turn already called a function (a resumed session)."""
        return any("functionCall" in p for turn in self.contents for p in self._parts(turn))


_SLEEP = re.compile(r"PERLSLEEP=([0-9.]+)")


def default_script(request: GeminiRequest) -> Reply:  # noqa: PLR0911 - one branch a keyword
    """The keyword script (see :func:`tests.support.responses_server.default_script`)."""
    prompt = request.prompt
    if not request.is_main:
        return Text('{"reasoning": "scripted", "next_speaker": "user"}')
    if request.after_tool:
        return Text("done")
    if "FAIL401" in prompt:
        return Failure(401, "API key not valid. Please pass a valid API key. (scripted 401)")
    if "FAIL500" in prompt:
        return Failure(500, "Internal error encountered. (scripted 500)")
    if "HANG" in prompt:
        return Hang()
    if sleeper := _SLEEP.search(prompt):
        command = f"perl -e 'sleep {sleeper.group(1)}' && echo slept > slept.txt"
        return Call("run_shell_command", {"command": command, "description": "sleep"})
    if request.resumed:
        return Text(f"ack: {prompt}")
    return Call("write_file", {"file_path": "hello.txt", "content": "hello from the fake API\n"})


class GeminiServer(ScriptedServer[GeminiRequest, Reply]):
    """The server; ``with GeminiServer() as api:`` starts and stops it."""

    def __init__(self, script: Any = default_script) -> None:
        super().__init__(script)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``, the CLI's ``GOOGLE_GEMINI_BASE_URL``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def main_requests(self) -> list[GeminiRequest]:
        """The agent's turns (side requests left out)."""
        return [r for r in self.requests if r.is_main]

    def handle(self, exchange: Exchange) -> None:
        """Answer ``generateContent`` / ``streamGenerateContent`` as the script says."""
        request = GeminiRequest(exchange.path, exchange.headers, exchange.body)
        if "generateContent" not in exchange.path and "GenerateContent" not in exchange.path:
            exchange.json(404, {"error": {"code": 404, "message": f"no route {exchange.path}"}})
            return
        self.record(request)
        reply = self.script(request)
        if isinstance(reply, Failure):
            status = _STATUS.get(reply.status, "INTERNAL")
            error = {"code": reply.status, "message": reply.message, "status": status}
            exchange.json(reply.status, {"error": error})
            return
        if not request.streaming:
            if isinstance(reply, Hang):
                exchange.hang(reply.seconds)
                return
            exchange.json(200, _response(reply))
            return
        exchange.start_sse()
        if isinstance(reply, Hang):
            exchange.hang(reply.seconds)
            return
        exchange.sse(_response(reply))


def _response(reply: Text | Call) -> dict[str, Any]:
    part: dict[str, Any]
    if isinstance(reply, Text):
        part = {"text": reply.text}
    else:
        part = {"functionCall": {"name": reply.name, "args": reply.arguments}}
    return {
        "candidates": [
            {"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": {
            "promptTokenCount": PROMPT_TOKENS,
            "candidatesTokenCount": CANDIDATE_TOKENS,
            "totalTokenCount": PROMPT_TOKENS + CANDIDATE_TOKENS,
        },
        "modelVersion": MODEL,
    }
