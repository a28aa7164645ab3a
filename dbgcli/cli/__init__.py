"""The ``dbg`` command line."""

from dbgcli.cli.app import app, main

__all__ = ["app", "main"]
