"""Long-lived SSE answers that keep only what streaming needs while they stream.

An idle watcher of ``GET /tasks/{id}/events`` may stay open for hours, and whatever its
request holds stays in memory as long: served as a ``StreamingResponse`` from inside the
route, that is the whole request stack (FastAPI's exit stacks and dependency results, the
``Request``, Starlette's exception wrappers, an anyio task group with two more tasks), some
20 KiB per watcher. So the route only validates (auth, task, position) and returns an
:class:`EventStream`; :class:`StreamHandOff`, a middleware in front of the router, takes it
once the route's stack has returned and streams it itself, with one small task that listens
for the client leaving.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

#: The scope key through which an :class:`EventStream` reaches :class:`StreamHandOff`.
_HANDOFF = "forgeline.stream_handoff"


class EventStream(Response):
    """A ``text/event-stream`` answer whose body is ``chunks``, streamed until they end or
    the client leaves (then ``chunks`` is closed). Behind a :class:`StreamHandOff` it is
    streamed by the middleware after the route returned; elsewhere, where it is called."""

    media_type = "text/event-stream"

    def __init__(
        self, chunks: AsyncGenerator[bytes, None], headers: Mapping[str, str] | None = None
    ) -> None:
        # No body to render: Response.__init__ would set a content-length.
        self.chunks = chunks
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        slot: list[EventStream] | None = scope.get(_HANDOFF)
        if slot is not None and not slot:
            slot.append(self)  # streamed by the middleware once the route has returned
            return
        await self.stream(receive, send)

    async def stream(self, receive: Receive, send: Send) -> None:
        """Send the headers, then each chunk as it comes; a client that leaves cancels the
        wait for the next chunk (never noticed otherwise while the stream is idle)."""
        current = asyncio.current_task()
        assert current is not None  # noqa: S101 - always called from a task
        gone = asyncio.get_running_loop().create_task(_disconnected(receive))

        def client_left(listener: asyncio.Task[None]) -> None:
            if not listener.cancelled():
                current.cancel()

        gone.add_done_callback(client_left)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone.done() or gone.cancelled():
                raise  # cancelled from outside (a shutdown): not ours to swallow
            current.uncancel()  # the client left: a normal end
        finally:
            gone.remove_done_callback(client_left)
            if gone.done() and not gone.cancelled():
                gone.exception()  # a receive that failed also means the client is gone
            gone.cancel()
            await self.chunks.aclose()


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone (a request body not read yet is skipped)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class StreamHandOff:
    """Streams the :class:`EventStream` a route returned after the route's own stack has
    unwound (see the module docstring); every other answer passes through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        slot: list[EventStream] = []
        scope[_HANDOFF] = slot
        before = set(scope)
        await self.app(scope, receive, send)
        if slot:
            stream = slot.pop()
            # What the route's stack added to the scope (its exit stacks, now closed, its
            # dependency results) is not needed while streaming; the matched route is, by
            # the access log.
            for key in set(scope) - before - {"route"}:
                del scope[key]
            await stream.stream(receive, send)
