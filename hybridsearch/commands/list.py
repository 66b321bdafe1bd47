"""``hybridsearch list models|methods``: print the registries."""

from __future__ import annotations

import argparse
import json

NAME = "list"
HELP = "list registered models or PEFT methods"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["models", "methods"])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _models() -> list[dict]:
    from ..models import MODELS

    rows = []
    for name, spec in MODELS.items():
        c = spec.config
        depth = getattr(c, "depth", None) or getattr(c, "n_layer", None)
        rows.append({"name": name, "kind": spec.kind, "d_model": c.d_model, "layers": depth,
                     "d_state": c.d_state, "pretrained": spec.checkpoint is not None,
                     "description": spec.description})
    return rows


def _methods() -> list[dict]:
    from ..peft import METHODS

    return [{"name": n, "models": ",".join(s.kinds), "per_layer": s.per_layer, "description": s.description,
             "source": s.source, "defaults": s.config().to_dict()} for n, s in METHODS.items()]


def run(args: argparse.Namespace) -> int:
    rows = _models() if args.what == "models" else _methods()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    from ..display import console

    cols = [k for k in rows[0] if k != "defaults"]
    table = Table(title=f"hybridsearch {args.what}")
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*(str(r[c]) for c in cols))
    console().print(table)
    return 0
