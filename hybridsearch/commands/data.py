"""``hybridsearch data``: check a VTAB-1k tree, build the embedded mini-VTAB, show where it is cached."""

from __future__ import annotations

import argparse
import json
import sys
import time

NAME = "data"
HELP = "check VTAB-1k data, build the embedded mini-VTAB, show the data cache"

_MAX_PROBLEMS_SHOWN = 50


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    check = sub.add_parser("check", help="scan a VTAB-1k tree (NOAH layout) and report every problem")
    check.add_argument(
        "--vtab-root", metavar="DIR", default=None,
        help="folder holding one sub-folder per task (default: the mini-VTAB cache, built if missing)",
    )
    check.add_argument("--tasks", metavar="A,B", default=None, help="comma-separated task names (default: all)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--no-decode", dest="decode", action="store_false",
        help="only open image headers (faster; misses truncated files)",
    )
    check.add_argument("--seed", type=int, default=0, help="mini-VTAB seed when --vtab-root is omitted")

    build = sub.add_parser("build-mini-vtab", help="build the embedded mini-VTAB (deterministic, NOAH layout)")
    build.add_argument("--out", metavar="DIR", default=None, help="target folder (default: the data cache)")
    build.add_argument("--seed", type=int, default=0, help="seed fixing every byte (default 0)")
    build.add_argument("--tasks", metavar="A,B", default=None, help="comma-separated subset of tasks")

    path = sub.add_parser("path", help="print where mini-VTAB is cached ($HYBRIDSEARCH_DATA_DIR)")
    path.add_argument("--seed", type=int, default=0, help="mini-VTAB seed (default 0)")


def _split_tasks(value: str | None) -> list[str] | None:
    return [t.strip() for t in value.split(",") if t.strip()] if value else None


def _print_report(report: object) -> None:
    from rich.table import Table

    from .. import display
    from ..data.vtab import SPLITS

    console = display.console()
    table = Table(title=f"VTAB-1k check: {report.root}")
    table.add_column("task", no_wrap=True)
    table.add_column("group", no_wrap=True)
    for col in ("classes", "train", "val", "trainval", "test", "seen", "errors"):
        table.add_column(col, justify="right", no_wrap=True)
    for t in report.tasks:
        counts = [str(t.splits[s].images) if s in t.splits and t.splits[s].present else "-" for s in SPLITS]
        n_cls = "?" if t.num_classes is None else str(t.num_classes)
        style = "red" if t.problems else None
        table.add_row(t.task, t.group, n_cls, *counts, str(t.classes_seen), str(len(t.problems)), style=style)
    console.print(table)
    problems = report.problems
    for p in problems[:_MAX_PROBLEMS_SHOWN]:
        console.print(f"[red]{p.kind}[/red] {p}", highlight=False, soft_wrap=True)
    if len(problems) > _MAX_PROBLEMS_SHOWN:
        console.print(f"... and {len(problems) - _MAX_PROBLEMS_SHOWN} more problems (use --json for all)")
    for t in report.tasks:
        for w in t.warnings:
            console.print(f"[yellow]warning[/yellow] {w}", highlight=False, soft_wrap=True)
    console.print("[green]no problems[/green]" if report.ok else f"[red]{len(problems)} problem(s)[/red]")


def _check(args: argparse.Namespace) -> int:
    from ..data.mini_vtab import ensure_mini_vtab
    from ..data.vtab import check_vtab

    root = args.vtab_root if args.vtab_root is not None else ensure_mini_vtab(args.seed)
    report = check_vtab(root, _split_tasks(args.tasks), decode=args.decode)
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_report(report)
    return 0 if report.ok else 1


def _build(args: argparse.Namespace) -> int:
    from ..data.mini_vtab import build_mini_vtab, ensure_mini_vtab, mini_vtab_path, read_manifest
    from ..data.vtab import SPLITS

    tasks = _split_tasks(args.tasks)
    start = time.perf_counter()
    if args.out is not None:
        build_mini_vtab(args.out, args.seed, tasks=tasks)
        out = args.out
    else:
        existed = mini_vtab_path(args.seed, tasks=tasks).is_dir()
        out = ensure_mini_vtab(args.seed, tasks=tasks)
        if existed:
            print(f"already built (verified): {out}", file=sys.stderr)
    manifest = read_manifest(out)
    for name, entry in manifest["tasks"].items():
        sizes = " ".join(f"{s}={entry['splits'][s]['count']}" for s in SPLITS)
        print(f"{name:10s} {entry['group']:11s} classes={entry['num_classes']:<3d} {sizes}", file=sys.stderr)
    print(f"seed {manifest['seed']}, checksum {manifest['checksum'][:16]}, "
          f"{time.perf_counter() - start:.1f}s", file=sys.stderr)
    print(out)
    return 0


def _path(args: argparse.Namespace) -> int:
    from ..data.mini_vtab import mini_vtab_path

    print(mini_vtab_path(args.seed))
    return 0


def run(args: argparse.Namespace) -> int:
    handlers = {"check": _check, "build-mini-vtab": _build, "path": _path}
    handler = handlers.get(getattr(args, "data_command", None) or "")
    if handler is None:
        print("usage: hybridsearch data {check,build-mini-vtab,path} ...", file=sys.stderr)
        return 2
    return handler(args)
