"""``hybridsearch pretrain TARGET``: rebuild a bundled proxy from its shipped source data.

* ``vim-proxy``: a 4-layer Vim on Fashion-MNIST (hustvl ``.pth``);
* ``mamba-proxy``, ``mamba2-proxy``: byte-level 4-layer Mamba-1 / Mamba-2 LMs on WordNet glosses and examples,
  one recipe (mamba_ssm directory);
* ``commonsense-proxy``: the WordNet commonsense-style task set in the LLM-Adapters layout.

Each target is one entry of ``TARGETS``: its default output and the function that rebuilds it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data.commonsense import BUNDLED_ROOT
from ..models import ASSETS
from ..registry import Registry

NAME = "pretrain"
HELP = ("rebuild a bundled proxy: vim-proxy (Fashion-MNIST), mamba-proxy / mamba2-proxy (WordNet byte LMs) or "
        "commonsense-proxy (WordNet task set)")


@dataclass(frozen=True)
class Target:
    out: Path  # the bundled asset it writes over unless --out is given
    build: Callable[[argparse.Namespace, Path], tuple[dict, Path | None]]  # -> (info, where to write it or None)


TARGETS: Registry[Target] = Registry("pretrain target")


def _vim_proxy(args: argparse.Namespace, out: Path) -> tuple[dict, Path | None]:
    from ..proxies.vim_proxy import FASHION_DIR, pretrain_vim_proxy

    info = pretrain_vim_proxy(args.data or FASHION_DIR, out, args.epochs, args.seed, args.limit)
    return info, out.with_suffix(".json")


def _lm_proxy(name: str) -> Callable[[argparse.Namespace, Path], tuple[dict, Path | None]]:
    def build(args: argparse.Namespace, out: Path) -> tuple[dict, Path | None]:
        from ..proxies.mamba_proxy import PretrainRecipe, pretrain_mamba_proxy

        recipe = PretrainRecipe(seed=args.seed)
        if args.steps is not None:
            recipe.steps = args.steps
            recipe.warmup_steps = min(recipe.warmup_steps, max(args.steps // 10, 1))
        return pretrain_mamba_proxy(args.wordnet, out, recipe, name=name), out / "pretrain.json"

    return build


def _commonsense_proxy(args: argparse.Namespace, out: Path) -> tuple[dict, Path | None]:
    from ..proxies.commonsense_proxy import build_commonsense_proxy

    return build_commonsense_proxy(args.wordnet, out, seed=args.seed), None  # it writes its own manifest.json


TARGETS.register("vim-proxy", Target(ASSETS / "vim-proxy.pth", _vim_proxy))
TARGETS.register("mamba-proxy", Target(ASSETS / "mamba-proxy", _lm_proxy("mamba-proxy")))
TARGETS.register("mamba2-proxy", Target(ASSETS / "mamba2-proxy", _lm_proxy("mamba2-proxy")))
TARGETS.register("commonsense-proxy", Target(BUNDLED_ROOT, _commonsense_proxy))


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", choices=TARGETS.names())
    p.add_argument("--data", type=Path, default=None,
                   help="vim-proxy: Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--wordnet", type=Path, default=None,
                   help="the LM proxies / commonsense-proxy: WordNet data.* folder (default /usr/share/wordnet)")
    p.add_argument("--epochs", type=int, default=8, help="vim-proxy epochs (default 8)")
    p.add_argument("--steps", type=int, default=None, help="LM proxies: optimizer steps (default 1200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="vim-proxy: use only the first N training images")
    p.add_argument("--out", type=Path, default=None,
                   help="output: vim-proxy .pth file, an LM proxy's or commonsense-proxy's folder (default: the "
                        "bundled asset)")


def run(args: argparse.Namespace) -> int:
    target = TARGETS.get(args.model)
    info, meta = target.build(args, args.out or target.out)
    if meta is not None:
        meta.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return 0
