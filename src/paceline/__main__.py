"""``python -m paceline`` runs the CLI."""

from .cli import main

main()
