"""``python -m forgeline`` runs the CLI."""

from forgeline.entrypoints.cli.main import main

main()
