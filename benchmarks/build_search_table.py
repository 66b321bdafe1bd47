"""Build the recorded benchmark of mini_vtab's space (benchmarks/search_table/): every baseline plus a fixed
scrambled-Sobol design within the budget, each configuration trained with ``--seeds`` seeds at full fidelity,
with the val200 accuracy after every epoch of every task (so every fidelity the pruners use), the exact
trainable count and the seconds.

It is a study, run by the normal engine (``run_study``: worker processes, a journal storage, the search
``Objective``): the configurations are queued in a new study (config 0 with seeds 0..S-1, then config 1, ...)
and trained in that order, so a partial table holds whole configurations. Resumable: run the same command again
after a crash or Ctrl-C (finished trials are kept, interrupted ones re-run with their seed). ``--export-only``
writes the table from what has finished so far. The space is benchmarks/search_table/space.yaml (mini_vtab's
configuration space, random sampler, no pruner); the simulator (benchmarks/bench_search_table.py) refuses a table
of another configuration space.

Usage: nice -n 10 python benchmarks/build_search_table.py [--configs 400] [--seeds 2] [--workers 2]
       [--storage runs/search_table.journal] [--out benchmarks/search_table/table.json] [--export-only]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SPACE = HERE / "search_table" / "space.yaml"
STUDY = "search_table"


def queue_configs(study: Any, space: Any, configs: int, seeds: int, design_seed: int) -> int:
    """A new table study: every baseline, then the Sobol design, each configuration ``seeds`` times in a row."""
    from hybridsearch.search.space.design import sobol_design

    if study.get_trials(deepcopy=False):
        return 0
    baselines = space.baseline_params()
    design = sobol_design(space, configs - len(baselines), seed=design_seed, exclude=baselines.values())
    rows = [(name, p) for name, p in baselines.items()] + [("design", p) for p in design]
    for i, (role, params) in enumerate(rows):
        for _ in range(seeds):
            study.enqueue_trial(params, user_attrs={"table_config": i, "role": role}, skip_if_exists=False)
    return len(rows)


def export(study: Any, space: Any, args: argparse.Namespace, wall: float | None) -> dict[str, Any]:
    """The compact table: per configuration its params, exact trainable count and, per seed, the val200 curve
    (step = task index x epochs + epoch, the objective's report steps), the per-task accuracy and seconds."""
    from optuna.trial import TrialState

    from hybridsearch.search.study import _live

    configs: dict[int, dict[str, Any]] = {}
    every = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in every}

    def queued(t: Any) -> dict[str, Any]:
        """The table attributes the trial was queued with: a retry of a trial lost to a dead worker carries only
        ``retry_of``, so follow it back to the queued trial."""
        while "table_config" not in t.user_attrs and t.user_attrs.get("retry_of") in by_number:
            t = by_number[t.user_attrs["retry_of"]]
        return t.user_attrs

    trials = _live(every)
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != TrialState.COMPLETE or "table_config" not in (q := queued(t)):
            continue
        i = int(q["table_config"])
        c = configs.setdefault(i, {"config": i, "role": q["role"], "params": t.params,
                                   "trainable": t.user_attrs["trainable"], "runs": []})
        timings = t.user_attrs.get("timings", {})
        c["runs"].append({"seed": t.user_attrs["seed"],
                          "curve": [round(v, 4) for _, v in sorted(t.intermediate_values.items())],
                          "seconds": timings.get("total"),
                          "task_seconds": {k: v for k, v in timings.items() if k != "total"}})
    failed = [{"trial": t.number, "config": queued(t).get("table_config"), "failure": t.user_attrs.get("failure")}
              for t in trials if t.state == TrialState.FAIL]
    import optuna
    import torch

    from hybridsearch.search.simulate import configuration_space

    fid = space.fidelity
    return {
        "benchmark": "mini_vtab configuration space: every baseline + a scrambled Sobol design, full fidelity",
        "command": " ".join(["python", "benchmarks/build_search_table.py", *sys.argv[1:]]),
        "space": str(SPACE.relative_to(HERE.parent)), "space_hash": space.space_hash(),
        "configuration_space": configuration_space(space),
        "steps": {"tasks": space.search_tasks, "epochs": fid.epochs,
                  "step": "task index x epochs + epoch (1-based), as the objective reports to the pruner"},
        "design": {"kind": "scrambled Sobol (scipy.stats.qmc), within the budget, baselines excluded",
                   "seed": args.design_seed, "configs_queued": args.configs, "seeds_per_config": args.seeds},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg_1m_at_export": round(os.getloadavg()[0], 2), "workers": args.workers,
                    "threads_per_worker": int(os.environ.get("OMP_NUM_THREADS", "1")), "nice": os.nice(0),
                    "python": platform.python_version(), "torch": torch.__version__, "optuna": optuna.__version__},
        "wall_s_this_run": None if wall is None else round(wall, 1),
        "complete_configs": sum(len(c["runs"]) >= args.seeds for c in configs.values()),
        "failed": failed,
        "configs": [configs[i] for i in sorted(configs)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", type=int, default=400, help="configurations: the baselines + a Sobol design")
    ap.add_argument("--seeds", type=int, default=2, help="training seeds per configuration")
    ap.add_argument("--design-seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--storage", default="runs/search_table.journal")
    ap.add_argument("--out", type=Path, default=HERE / "search_table" / "table.json")
    ap.add_argument("--export-only", action="store_true", help="write the table from the finished trials and stop")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker: proxy trials scale by processes

    import optuna

    from hybridsearch.search.optuna_engine import run_study
    from hybridsearch.search.space import load_space
    from hybridsearch.search.study import RunOptions, check_data, finished, open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(SPACE)
    opts = RunOptions(study=STUDY, storage=args.storage, space_ref=str(SPACE), trials=args.configs * args.seeds,
                      workers=args.workers)
    study = open_study(opts, space, create=True, data=check_data(opts, space))
    queued = queue_configs(study, space, args.configs, args.seeds, args.design_seed)
    if queued:
        print(f"queued {queued} configurations x {args.seeds} seeds", file=sys.stderr)
    wall = None
    if not args.export_only:
        t0, last = time.perf_counter(), [-1]

        def poll(s: optuna.Study) -> None:
            n = finished(s)
            if n != last[0]:
                last[0] = n
                print(f"{time.strftime('%H:%M:%S')} {n}/{opts.trials} trials finished", file=sys.stderr, flush=True)

        run_study(opts, on_trial=lambda s, t: poll(s), poll=poll)
        wall = time.perf_counter() - t0
        study = optuna.load_study(study_name=STUDY, storage=study._storage)
    table = export(study, space, args, wall)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, separators=(",", ":")) + "\n")
    print(f"{table['complete_configs']} complete configurations -> {args.out} "
          f"({args.out.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
