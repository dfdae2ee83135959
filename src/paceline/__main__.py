"""``python -m paceline`` runs the CLI."""

from ._entry import main

main()
