"""The ``forgeline`` command line.

:func:`main` is the entry point. It is kept light: ``forgeline --version`` answers without
loading the commands (:mod:`forgeline.entrypoints.cli.main`, whose imports are most of a
command's start-up), and ``forgeline agent …`` loads only its own group, whose runs are
timed against the bare agent CLI.
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
    try:
        if sys.argv[1:2] == ["agent"]:
            from typer.main import get_group

            from forgeline.entrypoints.cli.agent_run import agent_app

            # A group, as under the full app (a lone command would take "run" as an argument).
            get_group(agent_app)(args=sys.argv[2:], prog_name="forgeline agent")
        else:
            from forgeline.entrypoints.cli.main import app

            app()
    finally:
        # On exit Python collects every object of every loaded module once more, ~45 ms
        # of a short command's wall time for nothing: frozen objects are skipped.
        gc.freeze()
