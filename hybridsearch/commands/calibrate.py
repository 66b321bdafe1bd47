"""``hybridsearch calibrate --space S --configs K``: does the proxy fidelity rank configurations like full
training? Spearman and Kendall rank correlation over K sampled configurations."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "calibrate"
HELP = "train K sampled configurations at proxy and full fidelity; rank correlation (can the proxy be trusted?)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, help="bundled space name or a YAML path")
    p.add_argument("--configs", type=int, default=8, help="configurations to sample (default 8, at least 3)")
    p.add_argument("--proxy-epochs", type=int, default=None, help="default: the space's fidelity.epochs")
    p.add_argument("--full-epochs", type=int, default=None, help="default: 3x the proxy epochs")
    p.add_argument("--full-train-examples", type=int, default=None,
                   help="cap on train examples per task at full fidelity (default: all)")
    p.add_argument("--seed", type=int, default=0, help="sampler and training seed")
    p.add_argument("--data-root", default=None, help="dataset root (VTAB-1k folder)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the result as JSON (progress goes to stderr)")


def run(args: argparse.Namespace) -> int:
    import optuna

    from ..search.calibrate import calibrate, render
    from ..search.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(args.space)
    result = calibrate(space, args.configs, proxy_epochs=args.proxy_epochs, full_epochs=args.full_epochs,
                       full_train_examples=args.full_train_examples, seed=args.seed, data_root=args.data_root,
                       device=args.device, log=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        render(result)
    return 0
