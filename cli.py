"""Shim so ``python cli.py ...`` works from a checkout; the real entry point is ``hybridsearch.cli:main``."""

import sys

from hybridsearch.cli import main

if __name__ == "__main__":
    sys.exit(main())
