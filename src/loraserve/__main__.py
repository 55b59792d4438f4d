"""``python -m loraserve`` is the ``loraserve`` command."""

from loraserve.cli import main

main()
