"""``hybridsearch count``: exact parameter counts of a model + hybrid PEFT config, without allocating weights."""

from __future__ import annotations

import argparse
import json

NAME = "count"
HELP = "count base, trainable, head and per-method parameters exactly (meta device: no weights allocated)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registered model name or checkpoint path")
    p.add_argument("--peft", help="hybrid PEFT config YAML (omit for linear probing)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (Vim)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from ..peft import PeftConfig, count_config

    config = PeftConfig.from_yaml(args.peft) if args.peft else PeftConfig()
    counts = count_config(args.model, config, num_classes=args.num_classes)
    if args.json:
        print(json.dumps(counts))
        return 0
    from rich.table import Table

    from ..display import console

    t = Table(title=f"{args.model} + {args.peft or 'linear probing'}")
    t.add_column("part")
    t.add_column("parameters", justify="right")
    for k in ("base", "trainable", "head"):
        t.add_row(k, f"{counts[k]:,}")
    for k, v in counts["by_method"].items():
        t.add_row(f"  {k}", f"{v:,}")
    pct = 100.0 * counts["trainable"] / max(counts["base"], 1)
    t.add_row("trainable / base", f"{pct:.3f} %")
    console().print(t)
    return 0
