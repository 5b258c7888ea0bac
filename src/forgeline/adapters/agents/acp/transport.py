"""The SDK's message transport over an agent process started through the Workspace port.

The SDK's own stdio helpers start the agent themselves (with a trimmed environment and
outside any sandbox) and drop unreadable lines with nothing but a log line. This transport
instead speaks through a :class:`~forgeline.ports.workspace.DuplexProcess` the adapter
started in the sandbox, and frames and parses each line once, here:

- an oversized line (``LineTooLongError`` from the process's reader) ends the stream and is
  reported as fatal: the conversation cannot continue past a message that was never read;
- a line that is not a JSON object (a stray log line, garbage) is reported and skipped;
- a ``session/update`` the SDK's models reject is reported and skipped, unless it is of a
  kind this SDK does not know (a newer agent's): that is tolerated and counted
  (:attr:`ProcessTransport.unknown`), where the SDK would log a traceback for each;
- reading waits while the run's consumer is behind (:meth:`Problems.room`), so an agent
  that floods updates is held back by its full pipe instead of growing forgeline's memory.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, get_args

from acp.schema import SessionNotification
from pydantic import ValidationError

from forgeline.domain.errors import LineTooLongError, WorkspaceError
from forgeline.ports.workspace import DuplexProcess

#: How much of a garbled line an error event quotes (agent output is untrusted).
QUOTE_LIMIT = 200
#: How many garbled lines of one run are reported one by one; the rest are counted.
REPORTED_LIMIT = 20
#: How long the agent may leave a message of ours unread before the run is broken.
SEND_TIMEOUT_S = 30.0


def _known_update_kinds() -> frozenset[str]:
    """The ``sessionUpdate`` kinds the installed SDK models (read from its schema, so an
    SDK upgrade brings its new kinds along)."""
    kinds: set[str] = set()
    for model in get_args(SessionNotification.model_fields["update"].annotation):
        tag = getattr(model, "model_fields", {}).get("session_update")
        if tag is not None:
            kinds.update(get_args(tag.annotation))
    return frozenset(kinds)


KNOWN_UPDATE_KINDS = _known_update_kinds()


class ProcessTransport:
    """An ``acp`` message transport (``send``/``receive``/``close``) over ``process``.

    ``report(kind, message, fatal)`` is told of every problem with the stream;
    ``room()`` returns when the consumer can take more; ``heard()`` is called for every
    line read (the idle timeout counts from the last one).
    """

    def __init__(
        self,
        process: DuplexProcess,
        *,
        report: Callable[[str, str, bool], None],
        room: Callable[[], Awaitable[None]],
        heard: Callable[[], None],
    ) -> None:
        self._process = process
        self._report = report
        self._room = room
        self._heard = heard
        self._lines: AsyncIterator[bytes] = process.stdout_lines()
        self.garbled = 0
        #: ``session/update`` kinds unknown to the SDK, and how often each came.
        self.unknown: Counter[str] = Counter()

    async def send(self, message: dict[str, Any]) -> None:
        """Write one message as one line; ``WorkspaceError`` if the agent does not take it."""
        data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        await self._process.send(data, SEND_TIMEOUT_S)

    async def receive(self) -> dict[str, Any] | None:
        """The next message from the agent; None at the end of its output (or past a
        problem that ends it)."""
        await self._room()
        while True:
            try:
                line = await anext(self._lines)
            except StopAsyncIteration:
                return None
            except LineTooLongError as exc:
                self._report(
                    "protocol",
                    f"the agent sent a message longer than the {exc.limit}-byte limit"
                    " (agent_line_limit); the run was stopped",
                    True,
                )
                return None
            except WorkspaceError as exc:
                self._report("protocol", f"reading the agent's output failed: {exc.message}", True)
                return None
            self._heard()
            if not line.strip():
                continue
            message = self._parse(line)
            if message is not None:
                return message

    async def close(self) -> None:
        """End our side: the agent's stdin is closed (most agents then exit)."""
        self._process.close_stdin()

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not (isinstance(message, dict) and message.get("jsonrpc") == "2.0"):
            quote = line[:QUOTE_LIMIT].decode(errors="replace")
            more = "…" if len(line) > QUOTE_LIMIT else ""
            self._garbled(f"unreadable message from the agent (not JSON-RPC): {quote!r}{more}")
            return None
        if message.get("method") == "session/update" and not self._update_ok(message):
            return None
        return message

    def _update_ok(self, message: dict[str, Any]) -> bool:
        """Whether a ``session/update`` can go to the SDK (see the module docstring)."""
        params = message.get("params")
        try:
            SessionNotification.model_validate(params)
        except ValidationError as exc:
            update = params.get("update") if isinstance(params, dict) else None
            kind = update.get("sessionUpdate") if isinstance(update, dict) else None
            if isinstance(kind, str) and kind not in KNOWN_UPDATE_KINDS:
                self.unknown[kind[:QUOTE_LIMIT]] += 1
                return False
            first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
            where = ".".join(str(part) for part in first["loc"])[:QUOTE_LIMIT]
            self._garbled(f"malformed session/update from the agent: {where}: {first['msg']}")
            return False
        return True

    def _garbled(self, message: str) -> None:
        self.garbled += 1
        if self.garbled <= REPORTED_LIMIT:
            self._report("protocol", message, False)
        elif self.garbled == REPORTED_LIMIT + 1:
            self._report("protocol", "more unreadable messages from the agent; not reported", False)
