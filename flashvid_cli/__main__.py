"""``python -m flashvid_cli`` runs the ``vidq`` command line."""

from .cli import main

main()
