"""``hybridsearch report STUDY --out DIR``: PNG plots of a study and a ``report.md`` listing them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import add_storage, load_study

NAME = "report"
HELP = "plot a study (history, importances, Pareto front, accuracy vs parameters) and write report.md"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("study")
    add_storage(p)
    p.add_argument("--out", type=Path, required=True, help="folder for the PNG files and report.md")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")


def run(args: argparse.Namespace) -> int:
    from ..search.report import make_report

    r = make_report(load_study(args.study, args.storage), args.out)
    if args.json:
        print(json.dumps({k: r[k] for k in ("study", "out", "files", "notes", "importances")}, indent=2))
        return 0
    for name in r["files"].values():
        print(args.out / name)
    for note in r["notes"]:
        print(f"note: {note}")
    return 0
