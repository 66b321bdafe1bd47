"""``hybridsearch show STUDY``: the leaderboard (and the Pareto front for two objectives)."""

from __future__ import annotations

import argparse
import json

from ._common import add_storage, load_study

NAME = "show"
HELP = "show a study's leaderboard: score, trainable parameters, methods, state"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("study")
    add_storage(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=20, help="rows to show")


def run(args: argparse.Namespace) -> int:
    from ..search.results import arm_studies, leaderboard, summary
    from ._leaderboard import render

    study = load_study(args.study, args.storage)
    if args.json:
        doc = {"summary": summary(study, arm_studies(study)), "trials": leaderboard(study)}
        print(json.dumps(doc, indent=2, default=str))
    else:
        render(study, args.limit)
    return 0
