"""``hybridsearch evaluate``: commonsense accuracy of a Mamba LM (optionally with adapters) per task and on average;
with ``--harness``, lm-evaluation-harness tasks run in-process on the same model (``training.harness``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

NAME = "evaluate"
HELP = ("evaluate a Mamba LM (+ adapters) on LLM-Adapters commonsense test files (likelihood or generation), or on "
        "lm-evaluation-harness tasks (--harness)")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registered LM name (e.g. mamba-proxy) or checkpoint directory")
    p.add_argument("--adapters", type=Path, default=None, help="adapter folder written by save_adapters")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json or its folder, or 'byte' (default: next to the checkpoint; byte for the "
                        "proxies)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding dataset/<task>/test.json (default: the bundled commonsense_proxy)")
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: every task present)")
    p.add_argument("--evaluator", choices=["likelihood", "generation"], default="likelihood")
    p.add_argument("--limit", type=int, default=None, help="first N records of each task")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32, help="generation evaluator")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.add_argument("--json", action="store_true", help="print JSON")
    h = p.add_argument_group("lm-evaluation-harness (pip install 'hybridsearch[harness]')")
    h.add_argument("--harness", metavar="TASKS", default=None,
                   help="comma-separated lm-eval task or group names, zero-shot (bundled, offline: commonsense_proxy, "
                        "commonsense_proxy_lmeval and their tasks; lm-eval's own, e.g. piqa, need its datasets); "
                        "--data-root feeds the bundled ones, --limit and --batch-size apply")
    h.add_argument("--harness-tasks-dir", metavar="DIR", type=Path, action="append", default=None,
                   help="another folder of lm-eval task YAMLs (repeatable)")


def run(args: argparse.Namespace) -> int:
    if args.harness is not None:
        return _run_harness(args)
    from ..training.lm_eval import evaluate_tasks
    from ..training.lm_loading import load_lm

    model, tok = load_lm(args.model, tokenizer=args.tokenizer, adapters=args.adapters, device=args.device)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    start = time.perf_counter()
    scores = evaluate_tasks(model, tok, args.data_root, tasks, args.evaluator, args.limit, args.batch_size,
                            args.max_new_tokens)
    out = {"model": str(args.model), "adapters": str(args.adapters) if args.adapters else None, **scores.to_dict(),
           "seconds": time.perf_counter() - start}
    if args.json:
        print(json.dumps(out))
        return 0
    from rich.table import Table

    from ..display import console

    t = Table(title=f"{args.model}{' + ' + str(args.adapters) if args.adapters else ''} ({args.evaluator})")
    t.add_column("task")
    t.add_column("accuracy", justify="right")
    t.add_column("correct / total", justify="right")
    for name, r in out["tasks"].items():
        t.add_row(name, f"{100 * r['accuracy']:.1f}", f"{r['correct']} / {r['total']}")
    t.add_row("average", f"{100 * out['average']:.1f}", "")
    console().print(t)
    return 0


def _run_harness(args: argparse.Namespace) -> int:
    import logging

    from ..errors import ConfigError
    from ..training import harness

    if args.tasks:
        raise ConfigError("--tasks names our evaluator's tasks; with --harness, name the lm-eval tasks there")
    tasks = [t.strip() for t in args.harness.split(",") if t.strip()]
    lm = harness.harness_model(pretrained=args.model, adapters=args.adapters, tokenizer=args.tokenizer,
                               device=args.device or "cpu", batch_size=args.batch_size)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notices would bury the table
    start = time.perf_counter()
    results = harness.run_tasks(lm, tasks, include=args.harness_tasks_dir or (), limit=args.limit,
                                commonsense_root=args.data_root)
    out = {"model": str(args.model), "adapters": str(args.adapters) if args.adapters else None, "harness": tasks,
           "lm_eval": harness.lm_eval_version(), **harness.summarize(results),
           "seconds": time.perf_counter() - start}
    if args.json:
        print(json.dumps(out))
        return 0
    from rich.table import Table

    from ..display import console

    t = Table(title=f"{args.model}{' + ' + str(args.adapters) if args.adapters else ''} (lm-evaluation-harness, "
                    "zero-shot)")
    for col in ("task", "n", "metric", "value", "stderr"):
        t.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for kind in ("tasks", "groups"):
        for name, block in out[kind].items():
            for k, (metric, m) in enumerate(block["metrics"].items()):
                t.add_row(name if k == 0 else "", str(block["samples"] or "") if k == 0 else "", metric,
                          "" if m["value"] is None else f"{m['value']:.4f}",
                          "" if m["stderr"] is None else f"± {m['stderr']:.4f}")
    console().print(t)
    return 0
