"""``python -m qcompress``: the same as the ``qcompress`` command."""

from qcompress.cli import main

main()
