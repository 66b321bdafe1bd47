"""Engine settings compared on the recorded benchmark of mini_vtab (benchmarks/search_table/table.json), each run
``--seeds`` times by the simulator (hybridsearch/search/simulate.py: the real start-up queue, samplers and
pruners; recorded curves for the table's configurations, a surrogate fitted on the table with its seed-to-seed
noise for the others), with one worker.

The compute budget is random search's: ``--trials`` full-fidelity trials (x tasks x epochs, in epochs of one
task). Per engine setting: the compute (epochs) until a completed trial first scores at least random search's
median final best (median and interquartile range over the seeds; a seed that never gets there within
``--horizon`` x the budget counts as infinite), the same as a fraction of the budget, and the best so far at 1/4,
1/2 and all of the budget. Prints JSON; ``--png`` draws the median best-so-far curves.

Usage: python benchmarks/bench_search_table.py [--seeds 100] [--trials 24] [--engines random,tpe,...] [--json]
       [--png benchmarks/search_table/curves.png] [--processes 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TABLE = HERE / "search_table" / "table.json"
FRACTIONS = {"1/4": 0.25, "1/2": 0.5, "all": 1.0}


def _tpe(**options: Any) -> dict[str, Any]:
    return {"kind": "tpe", "multivariate": True, "group": True, **options}


SH = {"kind": "successive_halving", "min_resource": 1, "reduction_factor": 3}
NONE = {"kind": "none"}
# engine setting -> changes to the bundled mini_vtab space (None: the bundled space as it is)
ENGINES: dict[str, dict[str, Any] | None] = {
    "random": {"sampler": {"kind": "random"}, "pruner": NONE, "baselines": False},
    "tpe": {"sampler": _tpe(), "pruner": NONE, "baselines": False},
    "tpe_sh": {"sampler": _tpe(), "pruner": SH, "baselines": False},
    "tpe_hyperband": {"sampler": _tpe(), "pruner": {"kind": "hyperband", "min_resource": 1, "reduction_factor": 3},
                      "baselines": False},
    "gp": {"sampler": {"kind": "gp"}, "pruner": NONE, "baselines": False},
    "default": None,
    # the bundled default until the comparison on real training: the 12 baselines after the search's own trials
    "baselines_last": {"baselines": "last", "_on_default": True},
    # the bundled default before the recorded benchmark: the 12 baselines first, TPE's start-up among them
    "baselines_first": {"baselines": True, "startup": None, "_on_default": True},
}
# keys the engine settings leave out (the bundled default's own start-up and final re-trainings), unless a setting
# says "_on_default": true (then it changes only what it names)
_STARTUP_KEYS = ("startup", "final")


def engine_space(base: dict[str, Any], change: dict[str, Any] | None) -> Any:
    from hybridsearch.search.space import space_from_dict

    d = copy.deepcopy(base)
    change = None if change is None else dict(change)
    if change is not None and not change.pop("_on_default", False):
        for k in _STARTUP_KEYS:
            d.pop(k, None)
    if change is not None:
        d.update(copy.deepcopy(change))
        d["sampler"] = {"seed": 0, **d["sampler"]}
    return space_from_dict(d, source=f"mini_vtab ({'default' if change is None else 'engine setting'})")


# -- one process's state (fork: the fitted surrogate is shared) -----------------------------------------------
_STATE: dict[str, Any] = {}


def _run(job: tuple[str, int, int, int]) -> tuple[str, int, list[tuple[int, float | None]], dict[str, Any]]:
    import optuna

    from hybridsearch.search.simulate import simulate

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    name, seed, budget, extend = job
    sim = simulate(_STATE["spaces"][name], _STATE["objective"], budget, seed, extend_to=extend)
    search = [(e.spent, e.value) for e in sim.events if e.final_of is None]
    return name, seed, search, {"winner_expected": sim.winner_expected, "final_compute": sim.final_compute}


def _quantiles(xs: list[float]) -> dict[str, float]:
    """Median and quartiles; a seed that never reached the target is infinite (a quartile past it too)."""
    import numpy as np

    big = 1e300
    q = np.percentile(np.array([min(x, big) for x in xs]), [25, 50, 75])
    q = [math.inf if v >= big / 2 else float(v) for v in q]
    return {"median": q[1], "q25": q[0], "q75": q[2]}


def _num(x: float) -> float | None:
    return None if math.isinf(x) else round(x, 4)


def summarize(runs: dict[str, dict[int, list[tuple[int, float | None]]]], budget: int, horizon: float
              ) -> tuple[float, dict[str, Any]]:
    def best(events: list[tuple[int, float | None]], compute: float) -> float | None:
        done = [v for s, v in events if v is not None and s <= compute]
        return max(done) if done else None

    finals = [best(ev, budget) for ev in runs["random"].values()]
    target = statistics.median([f if f is not None else 0.0 for f in finals])
    out = {}
    for name, by_seed in runs.items():
        reach = []
        for ev in by_seed.values():
            hit = next((s for s, v in ev if v is not None and v >= target - 1e-12 and s <= horizon * budget), None)
            reach.append(math.inf if hit is None else float(hit))
        q = _quantiles(reach)
        curve = {}
        for label, f in FRACTIONS.items():
            vals = [b if (b := best(ev, f * budget)) is not None else 0.0 for ev in by_seed.values()]
            curve[label] = {"median": round(statistics.median(vals), 4), "mean": round(statistics.fmean(vals), 4)}
        out[name] = {
            "compute_to_random_best": {k: _num(v) for k, v in q.items()}
            | {"fraction_of_budget": {k: _num(v / budget) for k, v in q.items()},
               "reached": f"{sum(not math.isinf(r) for r in reach)}/{len(reach)}"},
            "best_so_far": curve,
        }
    return target, out


def plot(runs: dict[str, dict[int, list]], budget: int, horizon: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    xs = np.linspace(0, horizon * budget, 200)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, by_seed in runs.items():
        grid = []
        for ev in by_seed.values():
            row, cur, i = [], float("nan"), 0
            ev = sorted(ev, key=lambda e: e[0])
            for x in xs:
                while i < len(ev) and ev[i][0] <= x:
                    if ev[i][1] is not None:
                        cur = ev[i][1] if math.isnan(cur) else max(cur, ev[i][1])
                    i += 1
                row.append(cur)
            grid.append(row)
        g = np.array(grid)
        med = np.nanmedian(g, axis=0)
        ax.plot(xs / budget, med, label=name)
        ax.fill_between(xs / budget, np.nanpercentile(g, 25, axis=0), np.nanpercentile(g, 75, axis=0), alpha=0.12)
    ax.axvline(1.0, color="grey", lw=0.6)
    ax.set_xlabel("compute, in random search's budget (epochs)")
    ax.set_ylabel("best mean val200 accuracy so far")
    ax.set_title(f"mini_vtab recorded benchmark: median and IQR over {len(next(iter(runs.values())))} seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def surrogate_check(table: Any, space: Any, folds: int = 5) -> dict[str, Any]:
    """How well the surrogate predicts configurations it was not fitted on (k-fold over the table)."""
    import numpy as np
    from scipy.stats import spearmanr

    from hybridsearch.search.simulate import Table, TableObjective, score_of

    configs = table.configs
    idx = np.random.default_rng(0).permutation(len(configs))
    pred, true = [], []
    for k in range(folds):
        test = set(idx[k::folds].tolist())
        fit = Table([c for i, c in enumerate(configs) if i not in test], table.meta)
        obj = TableObjective(fit, space)
        for i in sorted(test):
            pred.append(obj.score(obj.forest.predict(np.array([obj.features(configs[i]["params"])]))[0].tolist()))
            true.append(statistics.fmean(score_of(r["curve"], obj.epochs) for r in configs[i]["runs"]))
    seed_sd = [statistics.stdev([score_of(r["curve"], space.fidelity.epochs) for r in c["runs"]])
               for c in configs if len(c["runs"]) > 1]
    err = np.array(pred) - np.array(true)
    return {"folds": folds, "spearman": round(float(spearmanr(pred, true)[0]), 3),
            "rmse": round(float(np.sqrt((err ** 2).mean())), 4),
            "seed_sd_median": round(statistics.median(seed_sd), 4) if seed_sd else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--trials", type=int, default=24, help="random search's trials: the compute budget")
    ap.add_argument("--horizon", type=float, default=1.5,
                    help="the settings other than random go on sampling up to this x the budget")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    ap.add_argument("--setting", action="append", default=[], metavar="NAME=JSON",
                    help="another engine setting: changes to the bundled space, e.g. "
                         "'sobol={\"startup\": {\"design\": 8}, \"baselines\": false}' (repeatable)")
    ap.add_argument("--table", type=Path, default=TABLE)
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--no-surrogate-check", action="store_true")
    ap.add_argument("--json", action="store_true", help="print JSON (the default output; kept for scripts)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from hybridsearch.search.simulate import Table, TableObjective
    from hybridsearch.search.space import load_space

    t0 = time.perf_counter()
    bundled = load_space("mini_vtab")
    table = Table.load(args.table, bundled)
    for item in args.setting:
        name, _, change = item.partition("=")
        ENGINES[name.strip()] = json.loads(change)
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    names += [i.partition("=")[0].strip() for i in args.setting if i.partition("=")[0].strip() not in names]
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise SystemExit(f"--engines: unknown {', '.join(unknown)}; allowed: {', '.join(ENGINES)}")
    if "random" not in names:
        names.insert(0, "random")
    base = bundled.to_dict()
    _STATE["spaces"] = {n: engine_space(base, ENGINES[n]) for n in names}
    _STATE["objective"] = TableObjective(table, bundled)
    fid = bundled.fidelity
    budget = args.trials * fid.epochs * len(bundled.search_tasks)
    # every setting runs as shipped for the budget; then the others go on sampling up to the horizon (a resumed
    # study), so that compute past the budget can be measured too
    jobs = [(n, s, budget, 0 if n == "random" else math.ceil(args.horizon * budget))
            for n in names for s in range(args.seeds)]
    runs: dict[str, dict[int, list]] = {n: {} for n in names}
    trials: dict[str, list[int]] = {n: [] for n in names}
    extra: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with mp.get_context("fork").Pool(args.processes) as pool:
        for name, seed, events, more in pool.imap_unordered(_run, jobs, chunksize=4):
            runs[name][seed] = events
            trials[name].append(sum(1 for s, _ in events if s <= budget))
            extra[name].append(more)
    target, engines = summarize(runs, budget, args.horizon)
    for n in names:
        engines[n]["trials_within_budget_median"] = statistics.median(trials[n])
        expected = [e["winner_expected"] for e in extra[n] if e["winner_expected"] is not None]
        # the returned winner's noise-free score (the table's / surrogate's mean curve), after the whole run
        engines[n]["winner_expected"] = {"median": round(statistics.median(expected), 4),
                                         "mean": round(statistics.fmean(expected), 4)} if expected else None
        engines[n]["final_compute_median"] = statistics.median(e["final_compute"] for e in extra[n])
    out = {
        "benchmark": "engine settings on the recorded mini_vtab table (simulated, one worker)",
        "command": " ".join(["python", "benchmarks/bench_search_table.py", *sys.argv[1:]]),
        "seeds": args.seeds, "budget_epochs": budget, "budget_trials": args.trials,
        "random_median_final_best": round(target, 4), "engines": engines,
        "table": {"path": str(args.table), "configs": len(table.configs),
                  "runs": sum(len(c["runs"]) for c in table.configs), "built": table.meta.get("machine")},
        "surrogate": None if args.no_surrogate_check else surrogate_check(table, bundled),
        "settings": {n: (ENGINES[n] or "the bundled mini_vtab space") for n in names},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2), "processes": args.processes},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if args.png:
        plot(runs, budget, args.horizon, args.png)
        out["png"] = str(args.png)
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
