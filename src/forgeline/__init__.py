"""forgeline: a self-hosted orchestrator for coding agents."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # Read lazily: importlib.metadata costs tens of milliseconds at every CLI start.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("forgeline")
        except PackageNotFoundError:  # a source tree without installation
            return "0.0.0"
    raise AttributeError(f"module 'forgeline' has no attribute {name!r}")
