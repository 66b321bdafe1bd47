"""``hybridsearch pretrain vim-proxy``: rebuild a bundled proxy backbone from its shipped source data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "pretrain"
HELP = "pretrain a proxy backbone (vim-proxy on Fashion-MNIST) and save it in the real checkpoint format"

_ASSETS = Path(__file__).resolve().parent.parent / "assets"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", choices=["vim-proxy"])
    p.add_argument("--data", type=Path, default=None,
                   help="Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images (smoke runs)")
    p.add_argument("--out", type=Path, default=_ASSETS / "vim-proxy.pth")


def run(args: argparse.Namespace) -> int:
    from ..pretrain import FASHION_DIR, pretrain_vim_proxy

    info = pretrain_vim_proxy(args.data or FASHION_DIR, args.out, args.epochs, args.seed, args.limit)
    meta = args.out.with_suffix(".json")
    meta.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return 0
