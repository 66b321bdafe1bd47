"""``hybridsearch validate``: check a search space (schema, methods on the model, budget) and summarise it."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "validate"
HELP = "check a search space file or bundled name; print every error with its key path, or a summary"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", metavar="FILE_OR_NAME", help="a search space YAML, or a bundled name (e.g. mini_vtab)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-count", action="store_true",
                   help="schema checks only: skip building the model for exact parameter counts and the budget")


def run(args: argparse.Namespace) -> int:
    from ..search.space import SpaceError, load_space, validate_space

    try:
        space = load_space(args.space)
    except SpaceError as e:
        return _fail(e.errors, [], args.json)
    report = validate_space(space, count=not args.no_count)
    if not report.ok:
        return _fail(report.errors, report.warnings, args.json)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        _print_summary(report)
    return 0


def _fail(errors: list[str], warnings: list[str], as_json: bool) -> int:
    if as_json:
        print(json.dumps({"ok": False, "errors": errors, "warnings": warnings}, indent=2))
    else:
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        print(f"{len(errors)} error(s)", file=sys.stderr)
    return 2


def _n(counts: dict | None, key: str = "budgeted") -> str:
    return "-" if counts is None else f"{counts['counts'][key]:,}"


def _print_summary(report) -> None:
    from ..display import console
    from ..search.space import describe

    s = describe(report.space)
    con = console()
    con.print(f"[bold]{s['name']}[/bold]  {s['source']}  hash {s['hash'][:12]}")
    if report.space.description:
        con.print(report.space.description)
    m, d = s["model"], s["data"]
    con.print(f"model: {m['name']} (checkpoint: {m['checkpoint'] or 'bundled / at run time'}, "
              f"head: {s['num_classes'] or '-'} classes)")
    con.print(f"data: {d['kind']} {', '.join(d['tasks'])}; {d['train_split']} -> {d['val_split']}; "
              f"root: {d['root'] or 'default / at run time'}")
    con.print(f"objectives: {', '.join(s['objectives'])} ({', '.join(s['directions'])}); trials: {s['trials']}")
    con.print(_methods_table(s, report))
    _print_budget(con, report)
    for st in s["stages"]:
        extra = ", drop one" if st.get("drop_one") else ""
        con.print(f"stage {st['name']}: {'select methods' if st.get('select') else 'tune'}{extra}, "
                  f"{st['trials']} trials")
    f = s["fidelity"]
    con.print(f"fidelity: {f['epochs']} epochs (min {f['min_epochs']}), train examples "
              f"{f['max_train_examples'] or 'all'}, tasks {', '.join(f['tasks'])}")
    con.print("sampler: " + ", ".join(f"{k}={v}" for k, v in s["sampler"].items()))
    con.print("pruner: " + ", ".join(f"{k}={v}" for k, v in s["pruner"].items()))
    con.print("recipe: " + ", ".join(f"{k} {v}" for k, v in s["recipe"].items()))
    for key in ("baselines", "startup", "final", "single_arm"):  # how the study starts and ends
        if s.get(key):
            con.print(f"{key}: " + (s[key] if isinstance(s[key], str) else
                                    ", ".join(f"{k}={v}" for k, v in s[key].items())))
    for w in report.warnings:
        con.print(f"[yellow]warning[/yellow]: {w}")


def _methods_table(s: dict, report):
    from rich.table import Table

    t = Table(title="methods")
    for col in ("method", "switch", "params", "own params (min-max)"):
        t.add_column(col, justify="right" if col.startswith("own") else "left")
    for name, m in s["methods"].items():
        params = [f"{k} {v}" for k, v in m["params"].items()]
        params += [f"rank[{g['layers']}] {g['rank']}" for g in m.get("layer_groups", [])]
        if "stage1" in m:
            params.append(f"stage 1: {m['stage1'] or 'PEFT defaults'}")
        own = report.per_method.get(name)
        t.add_row(name, "optional" if m["optional"] else "always", "\n".join(params) or "PEFT defaults",
                  f"{own['min']:,}-{own['max']:,}" if own else "-")
    return t


def _print_budget(con, report) -> None:
    b = report.space.budget
    limits = f"max {b.max_trainable:,}" if b.max_trainable is not None else "no max"
    if b.min_trainable is not None:
        limits += f", min {b.min_trainable:,}"
    head = "incl. head" if b.include_head else "head excluded"
    con.print(f"trainable parameters ({head}): smallest {_n(report.smallest)}, largest {_n(report.largest)}; "
              f"budget: {limits}")
    if report.stage1:
        con.print(f"stage 1: smallest {_n(report.stage1['smallest'])}, largest {_n(report.stage1['largest'])}")
