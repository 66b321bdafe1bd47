"""``hybridsearch pretrain TARGET``: rebuild a bundled proxy from its shipped source data.

* ``vim-proxy``: a 4-layer Vim on Fashion-MNIST (hustvl ``.pth``);
* ``mamba-proxy``: a byte-level 4-layer Mamba LM on WordNet glosses and examples (mamba_ssm directory);
* ``commonsense-proxy``: the WordNet commonsense-style task set in the LLM-Adapters layout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.commonsense import BUNDLED_ROOT
from ..models import ASSETS

NAME = "pretrain"
HELP = ("rebuild a bundled proxy: vim-proxy (Fashion-MNIST), mamba-proxy (WordNet byte LM) or commonsense-proxy "
        "(WordNet task set)")

_OUT = {"vim-proxy": ASSETS / "vim-proxy.pth", "mamba-proxy": ASSETS / "mamba-proxy",
        "commonsense-proxy": BUNDLED_ROOT}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", choices=list(_OUT))
    p.add_argument("--data", type=Path, default=None,
                   help="vim-proxy: Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--wordnet", type=Path, default=None,
                   help="mamba-proxy / commonsense-proxy: WordNet data.* folder (default /usr/share/wordnet)")
    p.add_argument("--epochs", type=int, default=8, help="vim-proxy epochs (default 8)")
    p.add_argument("--steps", type=int, default=None, help="mamba-proxy optimizer steps (default 1200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="vim-proxy: use only the first N training images")
    p.add_argument("--out", type=Path, default=None,
                   help="output: vim-proxy .pth file, mamba-proxy or commonsense-proxy folder (default: the "
                        "bundled asset)")


def run(args: argparse.Namespace) -> int:
    out: Path = args.out or _OUT[args.model]
    if args.model == "vim-proxy":
        from ..proxies.vim_proxy import FASHION_DIR, pretrain_vim_proxy

        info = pretrain_vim_proxy(args.data or FASHION_DIR, out, args.epochs, args.seed, args.limit)
        meta = out.with_suffix(".json")
    elif args.model == "mamba-proxy":
        from ..proxies.mamba_proxy import PretrainRecipe, pretrain_mamba_proxy

        recipe = PretrainRecipe(seed=args.seed)
        if args.steps is not None:
            recipe.steps = args.steps
            recipe.warmup_steps = min(recipe.warmup_steps, max(args.steps // 10, 1))
        info = pretrain_mamba_proxy(args.wordnet, out, recipe)
        meta = out / "pretrain.json"
    else:
        from ..proxies.commonsense_proxy import build_commonsense_proxy

        info = build_commonsense_proxy(args.wordnet, out, seed=args.seed)
        meta = None  # the task set writes its own manifest.json
    if meta is not None:
        meta.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return 0
