"""The `hierfl` command."""

from hierfl.cli.commands import main

__all__ = ["main"]
