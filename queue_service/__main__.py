"""``python -m queue_service`` runs the CLI."""

from queue_service.cli import main

main()
