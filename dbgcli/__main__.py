"""``python -m dbgcli`` runs the ``dbg`` command."""

from dbgcli.cli import main

main()
