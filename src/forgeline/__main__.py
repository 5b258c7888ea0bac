"""``python -m forgeline`` runs the CLI."""

from forgeline.entrypoints.cli import main

main()
