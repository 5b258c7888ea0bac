"""The HTTP API (FastAPI). Routes are added per resource; the container comes from the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from forgeline import __version__
from forgeline.bootstrap import Container, open_container
from forgeline.domain.errors import StorageError
from forgeline.settings import Settings


def create_app(settings: Settings, *, container: Container | None = None) -> FastAPI:
    """The ASGI app; ``container`` lets a test inject its own adapters."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if container is not None:
            app.state.container = container
            yield
            return
        async with open_container(settings) as built:
            app.state.container = built
            yield

    app = FastAPI(title="forgeline", version=__version__, lifespan=lifespan)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], response_model=None)
    async def readyz(request: Request) -> JSONResponse | dict[str, str]:
        """Readiness: the database is reachable."""
        built: Container = request.app.state.container
        try:
            await built.ping_database()
        except StorageError as exc:
            return JSONResponse(
                status_code=503,
                content={"error": {"code": exc.code, "message": exc.message}},
            )
        return {"status": "ready"}

    return app
