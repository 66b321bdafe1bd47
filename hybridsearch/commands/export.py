"""``hybridsearch export STUDY --out DIR [--retrain]``: the winner as a deployable hybrid PEFT config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import add_storage, load_study

NAME = "export"
HELP = "export the best trial as peft.yaml + meta.json (--retrain: full fidelity, test once, adapters, merged)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("study")
    add_storage(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--trial", type=int, default=None, help="export this trial instead of the best one")
    p.add_argument("--retrain", action="store_true", help="train at full fidelity on train800val200, test once")
    p.add_argument("--data-root", default=None)


def run(args: argparse.Namespace) -> int:
    from ..deploy import export_winner

    meta = export_winner(load_study(args.study, args.storage), args.out, args.trial, args.retrain, args.data_root)
    print(json.dumps({k: meta[k] for k in ("trial", "score", "counts") if k in meta}, default=str))
    print(f"wrote {args.out / 'peft.yaml'} and {args.out / 'meta.json'}")
    return 0
