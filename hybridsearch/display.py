"""The rich console every command prints tables with."""

from __future__ import annotations

from rich.console import Console

PIPED_WIDTH = 140


def console() -> Console:
    """A terminal's own width; piped into a file or CI log, 140 columns (rich would assume 80 and cut the
    methods, task and key names that the tables exist to show)."""
    c = Console()
    return c if c.is_terminal else Console(width=max(c.width, PIPED_WIDTH))
