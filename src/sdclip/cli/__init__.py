"""The `sdclip` command line: one module per command, shared flags once (`options`)."""

from sdclip.cli.main import main

__all__ = ["main"]
