"""The web dashboard (DESIGN.md ``/ui/…``): server-rendered pages over the same services as
the API, on the same port; the live parts are plain JavaScript files served from the
package (no CDN, no build step), allowed by a Content-Security-Policy that runs nothing else."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from forgeline.entrypoints.ui.pages import root, ui
from forgeline.entrypoints.ui.web import PREFIX


def install(app: FastAPI) -> None:
    """Serve the dashboard from ``app``: its pages under ``/ui``, ``/`` redirecting there."""
    app.include_router(root)
    app.include_router(ui)
    app.mount(
        f"{PREFIX}/static",
        StaticFiles(packages=[("forgeline.entrypoints.ui", "static")]),
        name="ui-static",
    )
