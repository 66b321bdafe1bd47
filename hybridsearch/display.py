"""The rich console every command prints tables with."""

from __future__ import annotations

import re

from rich.console import Console

PIPED_WIDTH = 140


def console(stderr: bool = False) -> Console:
    """A terminal's own width; piped into a file or CI log, 140 columns (rich would assume 80 and cut the
    methods, task and key names that the tables exist to show). ``stderr``: for prose beside a JSON document."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(width=max(c.width, PIPED_WIDTH), stderr=stderr)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` safe for a terminal line: control characters (escape sequences, carriage returns, line breaks)
    shown escaped, as ``repr`` shows them, never sent raw."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text.replace("\n", "\\n"))
