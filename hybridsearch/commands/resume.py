"""``hybridsearch resume STUDY``: continue a study after a crash or on more workers."""

from __future__ import annotations

import argparse

from ._common import load_study
from .run import add_run_options, execute

NAME = "resume"
HELP = "continue a study: re-queue trials of dead workers, run until the target number of finished trials"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("study")
    add_run_options(p)


def run(args: argparse.Namespace) -> int:
    a = load_study(args.study, args.storage).user_attrs
    if args.data_root is None:
        args.data_root = a.get("data_root")
    return execute(args, a["space_ref"], args.study, a.get("stage"), a.get("chosen"), single=a.get("single"))
