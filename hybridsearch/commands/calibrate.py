"""``hybridsearch calibrate --space S --configs K``: does the proxy fidelity rank configurations like full
training? Spearman and Kendall rank correlation over K sampled configurations."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..display import console as make_console

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

    from ..search.calibrate import calibrate
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


def render(result: dict[str, Any]) -> None:
    from rich.table import Table

    p, f = result["proxy"], result["full"]
    t = Table(title=f"proxy vs full fidelity on {result['space']}: {result['scored']}/{result['configs']} scored")
    for c, j in (("#", "right"), ("methods", "left"), ("trainable", "right"), ("proxy acc", "right"),
                 ("rank", "right"), ("full acc", "right"), ("rank", "right"), ("note", "left")):
        t.add_column(c, justify=j)
    for r in result["rows"]:
        t.add_row(str(r["index"]), ", ".join(r["methods"]), f"{r['trainable']:,}", _num(r["proxy"]),
                  _num(r["proxy_rank"], "g"), _num(r["full"]), _num(r["full_rank"], "g"), (r["failure"] or "")[:50])
    console = make_console()
    console.print(t)
    console.print(f"proxy: {p['epochs']} epochs, tasks {', '.join(p['tasks'])}, "
                  f"{p['max_train_examples'] or 'all'} train examples; full: {f['epochs']} epochs, "
                  f"tasks {', '.join(f['tasks'])}, {f['max_train_examples'] or 'all'} train examples")
    console.print(f"Spearman {_num(result['spearman'])} (p {_num(result['spearman_p'])}), "
                  f"Kendall {_num(result['kendall'])} (p {_num(result['kendall_p'])}); "
                  f"proxy's best is full's best: {result['top1_agrees']}; regret {_num(result['regret'])}")
    console.print(f"[bold]{result['verdict']}[/bold]")


def _num(v: float | None, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)
