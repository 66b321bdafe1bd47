"""Search efficiency on Mini-VTAB at equal compute: TPE + successive-halving pruning vs random search without
pruning, and the engine's own per-trial overhead.

Both arms run the real engine (``run_study``: JournalStorage in a temporary folder, the search ``Objective``,
real training of the bundled vim-proxy). Random search runs ``--trials`` trials; TPE + pruning then gets the
same compute, counted in epochs trained (deterministic, unlike seconds on a shared machine), and stops once it
has spent it. Reported per arm:

* ``to_reach_random_best``: the compute (epochs, trial seconds) until a completed trial first scores at least
  random search's final best (``null``: never within the budget);
* ``overhead``: after start-up (study creation, data check and load, once per run), the wall time not spent
  building models or training: sampler ask/tell, storage writes and reads, exact parameter counting, gc
  between trials. Per trial, and as a fraction of the trial time (model set-up + training).

Prints JSON. Usage: python benchmarks/bench_search.py [--trials 12] [--epochs 3] [--tasks 1]
[--train-examples 256] [--startup 4] [--threads 1] [--seeds 0[,1,2...]]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

_WRITES = ("create_new_trial", "set_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
           "set_trial_user_attr", "set_trial_system_attr", "set_study_user_attr")
_READS = ("get_all_trials", "get_trial", "get_study_user_attrs")


class BudgetSpent(Exception):
    """Raised from the trial callback to stop the engine once an arm has used its compute."""


# -- the two arms -------------------------------------------------------------------------------------------
def arm_space(base: dict, tasks: list[str], args: argparse.Namespace, tpe: bool) -> dict:
    d = json.loads(json.dumps(base))
    d["data"]["tasks"] = tasks
    d.pop("baselines", None)  # both arms sample from the first trial: baselines would make them identical
    d["fidelity"] = {"epochs": args.epochs, "min_epochs": 1, "max_train_examples": args.train_examples,
                     "max_val_examples": args.val_examples, "tasks": None}
    if tpe:
        d["sampler"] = {"kind": "tpe", "seed": args.seed, "multivariate": True, "group": True,
                        "n_startup_trials": args.startup}
        d["pruner"] = {"kind": "successive_halving", "min_resource": 1, "reduction_factor": 3}
    else:
        d["sampler"] = {"kind": "random", "seed": args.seed}
        d["pruner"] = {"kind": "none"}
    return d


def pick_tasks(spec: str, all_tasks: list[str]) -> list[str]:
    """``--tasks 2`` (the first two of mini_vtab's tasks) or ``--tasks mnist5k,rotation``."""
    if spec.isdigit():
        return all_tasks[: max(1, int(spec))]
    return [t.strip() for t in spec.split(",") if t.strip()]


# -- instrumentation ------------------------------------------------------------------------------------------
class Meter:
    """Seconds spent in wrapped functions, by category, plus epochs trained."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.epochs = 0
        self.first_trial_at: float | None = None  # perf_counter when the first trial was created
        self.start = 0.0

    def wrap(self, owner: Any, name: str, key: str) -> Callable:
        return self.timed(getattr(owner, name), key)

    def timed(self, fn: Callable, key: str) -> Callable:
        def timed(*a, **kw):
            t0 = time.perf_counter()
            if fn.__name__ == "create_new_trial" and self.first_trial_at is None:
                self.first_trial_at = t0
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[key] += time.perf_counter() - t0

        return timed


@contextlib.contextmanager
def instrumented(meter: Meter) -> Iterator[None]:
    from optuna.storages import JournalStorage

    from hybridsearch.search import objective, optuna_engine
    from hybridsearch.tasks import vision

    real_train = vision.train_classifier

    def train(*a, on_epoch=None, **kw):
        def counted(epoch: int, acc: float) -> None:
            meter.epochs += 1
            if on_epoch is not None:
                on_epoch(epoch, acc)

        return real_train(*a, on_epoch=counted, **kw)

    patches = [(vision, "train_classifier", meter.timed(train, "train")),
               (objective, "check_budget", meter.wrap(objective, "check_budget", "counting")),
               (vision, "create_model", meter.wrap(vision, "create_model", "setup")),
               (vision, "apply_peft", meter.wrap(vision, "apply_peft", "setup")),
               (optuna_engine, "load_search_tasks", meter.wrap(optuna_engine, "load_search_tasks", "data"))]
    patches += [(JournalStorage, n, meter.wrap(JournalStorage, n, "storage_write")) for n in _WRITES]
    patches += [(JournalStorage, n, meter.wrap(JournalStorage, n, "storage_read")) for n in _READS]
    saved = [(o, n, getattr(o, n)) for o, n, _ in patches]
    for o, n, f in patches:
        setattr(o, n, f)
    try:
        yield
    finally:
        for o, n, f in saved:
            setattr(o, n, f)


# -- running an arm -------------------------------------------------------------------------------------------
def run_arm(name: str, space_file: Path, storage: str, trials: int, epoch_budget: int | None,
            seed: int) -> tuple[optuna.Study, Meter, float]:
    from hybridsearch.search.optuna_engine import run_study
    from hybridsearch.search.study import RunOptions

    meter = Meter()

    def on_trial(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        value = f"{t.values[0]:.4f}" if t.values else "-"
        print(f"[{name}] trial {t.number} {t.state.name} {value} epochs so far {meter.epochs}", file=sys.stderr)
        if epoch_budget is not None and meter.epochs >= epoch_budget:
            raise BudgetSpent

    opts = RunOptions(study=name, storage=storage, space_ref=str(space_file), trials=trials, seed=seed)
    meter.start = time.perf_counter()
    with instrumented(meter), contextlib.suppress(BudgetSpent):
        run_study(opts, on_trial=on_trial)
    wall = time.perf_counter() - meter.start
    return optuna.load_study(study_name=name, storage=_storage(storage)), meter, wall


def _storage(path: str):
    from hybridsearch.search.storage import open_storage

    return open_storage(path)


# -- analysis ---------------------------------------------------------------------------------------------------
def timeline(study: optuna.Study) -> list[dict[str, Any]]:
    """Finished trials in order with cumulative epochs (reports) and trial seconds."""
    rows, epochs, seconds = [], 0, 0.0
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            continue
        epochs += len(t.intermediate_values)
        seconds += t.duration.total_seconds() if t.duration else 0.0
        rows.append({"trial": t.number, "state": t.state.name, "value": t.values[0] if t.values else None,
                     "epochs": epochs, "seconds": round(seconds, 2)})
    return rows


def first_reaching(rows: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    for r in rows:
        if r["state"] == "COMPLETE" and r["value"] is not None and r["value"] >= target - 1e-12:
            return {"trial": r["trial"], "epochs": r["epochs"], "seconds": r["seconds"]}
    return None


def overhead(meter: Meter, wall: float, n_trials: int) -> dict[str, Any]:
    """Start-up (study creation, data check and load: once per run) apart from the per-trial engine time."""
    s = meter.seconds
    startup = (meter.first_trial_at or meter.start) - meter.start
    trial_work = s["train"] + s["setup"]
    engine = max(0.0, wall - startup - trial_work)
    n = max(n_trials, 1)
    return {
        "wall_s": round(wall, 2), "startup_s": round(startup, 2), "data_load_s": round(s["data"], 2),
        "train_s": round(s["train"], 2), "model_setup_s": round(s["setup"], 2), "engine_s": round(engine, 2),
        "per_trial_ms": {k: round(1000 * v / n, 1) for k, v in
                         (("engine", engine), ("storage_write", s["storage_write"]),
                          ("storage_read", s["storage_read"]), ("counting", s["counting"]))},
        "fraction_of_trial_time": round(engine / trial_work, 4) if trial_work else None,
    }


def arm_summary(study: optuna.Study, meter: Meter, wall: float, target: float) -> dict[str, Any]:
    rows = timeline(study)
    states: dict[str, int] = defaultdict(int)
    for r in rows:
        states[r["state"]] += 1
    done = [r["value"] for r in rows if r["state"] == "COMPLETE"]
    return {"trials": len(rows), "states": dict(states), "best": max(done) if done else None,
            "epochs": rows[-1]["epochs"] if rows else 0, "trial_seconds": rows[-1]["seconds"] if rows else 0.0,
            "to_reach_random_best": first_reaching(rows, target), "overhead": overhead(meter, wall, len(rows)),
            "timeline": rows}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def run_pair(base: dict, tasks: list[str], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Random search, then TPE + SH on the compute random search used; both arms seeded with ``seed``."""
    args = argparse.Namespace(**{**vars(args), "seed": seed})
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        storage = str(Path(tmp) / "bench.journal")
        files = {}
        for name, tpe in (("random", False), ("tpe_sh", True)):
            files[name] = Path(tmp) / f"{name}.yaml"
            files[name].write_text(yaml.safe_dump(arm_space(base, tasks, args, tpe), sort_keys=False))
        rnd, rmeter, rwall = run_arm("random", files["random"], storage, args.trials, None, seed)
        budget = sum(len(t.intermediate_values) for t in rnd.get_trials(deepcopy=False))
        tpe, tmeter, twall = run_arm("tpe_sh", files["tpe_sh"], storage, args.max_trial_factor * args.trials,
                                     budget, seed)
        done = [t.values[0] for t in rnd.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        target = max(done) if done else float("inf")
        arms = {"random": arm_summary(rnd, rmeter, rwall, target),
                "tpe_sh": arm_summary(tpe, tmeter, twall, target)}
    reach = {k: (a["to_reach_random_best"] or {}) for k, a in arms.items()}
    return {
        "seed": seed, "random_best": None if not done else target, "epoch_budget": budget, **arms,
        "speedup_to_random_best": {"epochs": _ratio(reach["random"].get("epochs"), reach["tpe_sh"].get("epochs")),
                                   "seconds": _ratio(reach["random"].get("seconds"),
                                                     reach["tpe_sh"].get("seconds"))},
    }


def best_within(rows: list[dict[str, Any]], epochs: float) -> float | None:
    """The best completed score among the trials finished within ``epochs`` of compute."""
    done = [r["value"] for r in rows if r["state"] == "COMPLETE" and r["value"] is not None and r["epochs"] <= epochs]
    return max(done) if done else None


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.fmean(xs), 4) if xs else None


def across_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One seed is one draw of a noisy race: the median speed-up, how often TPE + SH needed at most half the
    compute (speed-up >= 2; never reaching counts as a miss), and each arm's best so far at a quarter, half and
    all of the compute (per seed and the mean over seeds)."""
    curve = {arm: {f"{q:.2f}": [best_within(r[arm]["timeline"], q * r["epoch_budget"]) for r in runs]
                   for q in (0.25, 0.5, 1.0)} for arm in ("random", "tpe_sh")}
    speedups = [r["speedup_to_random_best"]["epochs"] for r in runs]
    median = statistics.median(x if x is not None else 0.0 for x in speedups)  # never reaching: 0
    return {
        "seeds": [r["seed"] for r in runs], "speedup_epochs": speedups, "median_speedup_epochs": round(median, 3),
        "half_compute_or_less": f"{sum(x is not None and x >= 2 for x in speedups)}/{len(runs)}",
        "best_so_far_at_budget_fraction": curve,
        "mean_best_so_far": {arm: {q: _mean(v) for q, v in c.items()} for arm, c in curve.items()},
        "engine_fraction_of_trial_time": [r["tpe_sh"]["overhead"]["fraction_of_trial_time"] for r in runs],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=12, help="random-search trials (sets the compute budget)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per task per trial")
    ap.add_argument("--tasks", default="1", help="a count (first n mini_vtab tasks) or comma-separated names")
    ap.add_argument("--train-examples", type=int, default=256, help="train examples per task")
    ap.add_argument("--val-examples", type=int, default=200, help="val examples per task")
    ap.add_argument("--startup", type=int, default=4, help="TPE random start-up trials")
    ap.add_argument("--max-trial-factor", type=int, default=4, help="TPE arm: at most this x --trials trials")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seeds", "--seed", default="0", help="one seed, or several comma-separated (a pair each)")
    args = ap.parse_args()
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the engine keeps an explicit thread count
    import torch

    from hybridsearch.search.space import load_space

    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = load_space("mini_vtab").to_dict()
    tasks = pick_tasks(args.tasks, base["data"]["tasks"])
    out: dict[str, Any] = {"benchmark": "TPE + successive halving vs random search at equal compute (mini-VTAB)",
                           "config": {**vars(args), "seeds": seeds, "tasks": tasks}}
    runs = [run_pair(base, tasks, args, seed) for seed in seeds]
    out.update(runs[0] if len(runs) == 1 else {"summary": across_seeds(runs), "per_seed": runs})
    out["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
                      "optuna": optuna.__version__}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
