"""forgeline: a self-hosted orchestrator for coding agents."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("forgeline")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
