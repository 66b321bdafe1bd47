"""The ``hybridsearch`` command. Each subcommand is a module in ``hybridsearch.commands`` exposing
``NAME``, ``HELP``, ``configure(parser)`` and ``run(args) -> int``; they are discovered, not listed here."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback

from . import commands
from ._version import __version__
from .display import printable
from .errors import HybridSearchError
from .process import keep_freed_memory


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridsearch",
        description="Search hybrid parameter-efficient fine-tuning for Mamba and Vision Mamba.",
    )
    parser.add_argument("--version", action="version", version=f"hybridsearch {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    keep_freed_memory()  # the commands that train (run, finetune, pretrain...) reuse warm pages step after step
    try:
        return int(args._run(args) or 0)
    except HybridSearchError as e:
        if args.debug:
            traceback.print_exc()
        print(f"hybridsearch {args.command}: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM / SIGHUP of a search (errors.Interrupted)
        print("interrupted", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)


def one_line(message: str) -> str:
    """An error message as the one line the CLI promises: URL passwords masked, control characters escaped."""
    from .search.storage import redact

    return printable(redact(message))


if __name__ == "__main__":
    sys.exit(main())
