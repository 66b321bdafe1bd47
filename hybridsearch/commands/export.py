"""``hybridsearch export STUDY --out DIR [--retrain]``: the winner as a deployable hybrid PEFT config."""

from __future__ import annotations

import argparse
import json
import sys
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
    p.add_argument("--json", action="store_true", help="print meta.json's content as one JSON document on stdout")


def run(args: argparse.Namespace) -> int:
    from ..deploy import export_winner

    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    meta = export_winner(load_study(args.study, args.storage), args.out, args.trial, args.retrain, args.data_root,
                         log=log)
    if args.json:
        print(json.dumps(meta, indent=2, default=str))
        return 0
    trainable = (meta.get("counts") or {}).get("trainable")
    size = f"{trainable:,} trainable parameters" if isinstance(trainable, int) else "trainable parameters unknown"
    print(f"trial {meta['trial']}: score {meta['score']:.4f}, {size}; wrote {args.out / 'peft.yaml'} and "
          f"{args.out / 'meta.json'}")
    return 0
