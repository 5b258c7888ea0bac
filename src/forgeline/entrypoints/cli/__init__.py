"""The ``forgeline`` command line.

:func:`main` is the entry point. It is kept light: ``forgeline --version`` answers without
loading the commands (:mod:`forgeline.entrypoints.cli.main`, whose imports are most of a
command's start-up).
"""

from __future__ import annotations


def version_line() -> str:
    """What ``forgeline --version`` prints."""
    from forgeline import __version__

    return f"forgeline {__version__}"


def main() -> None:
    """Console-script entry point."""
    import gc
    import sys

    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(version_line() + "\n")
        return
    from forgeline.entrypoints.cli.main import app

    try:
        app()
    finally:
        # On exit Python collects every object of every loaded module once more, ~45 ms
        # of a short command's wall time for nothing: frozen objects are skipped.
        gc.freeze()
