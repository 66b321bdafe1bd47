"""The bundled default search against random search at equal compute, on real training: run the space as shipped
(every phase: its start-up, search, baselines, ``final`` re-trainings), count the epochs it trained, give random
search (no pruner, no baselines, no design, no final) as many full-fidelity trials as that compute holds, then
retrain each search's winner with ``--seeds`` on all the training data and score it once on test (and on the
search's own split, at the search's fidelity). Prints JSON.

Usage: python benchmarks/bench_default_vs_random.py [--space mini_vtab] [--storage runs/dvr.journal]
       [--seeds 1,2,3] [--workers 2] [--search-seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def epochs_trained(study: Any) -> int:
    """The compute a study used: epochs of one task trained, over every trial (each reports once an epoch)."""
    return sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))


def random_space(space: Any, trials: int, seed: int, folder: Path) -> Path:
    """The same configuration space searched by random sampling, every trial at full fidelity."""
    import yaml

    d = space.to_dict()
    for key in ("baselines", "startup", "final", "single_arm", "stages"):
        d.pop(key, None)
    d.update(name=f"{space.name}_random", trials=trials, sampler={"kind": "random", "seed": seed},
             pruner={"kind": "none"})
    if not d.get("description"):
        d.pop("description", None)
    path = folder / f"{space.name}_random.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def retrain(space: Any, trial: Any, seeds: list[int], data_root: str | None) -> dict[str, Any]:
    """The trial's configuration trained per seed: train800 -> val200 at the search's fidelity, and all the
    training data -> test (scored once per seed); mean accuracy over the tasks."""
    import torch

    from hybridsearch.training.recipe import Recipe

    family, fid = space.family, space.fidelity
    root = family.data_root(space, data_root)
    splits = {"val": family.load_tasks(space, root, max_train=fid.max_train_examples, max_val=fid.max_val_examples),
              "test": family.load_tasks(space, root, final=True)}
    recipe = Recipe.from_dict(trial.user_attrs["recipe"])
    recipe.epochs = fid.epochs
    out: dict[str, Any] = {"trial": trial.number, "methods": list(trial.user_attrs["peft"]["methods"]),
                           "trainable": trial.user_attrs.get("trainable"), "search_score": trial.values[0]}
    for split, tasks in splits.items():
        scores = []
        for seed in seeds:
            accs = []
            for task in tasks:
                torch.manual_seed(seed)
                model = family.build_model(space, task, trial.user_attrs["peft"])
                accs.append(family.train(space, model, task, recipe, seed))
            scores.append(sum(accs) / len(accs))
        out[split] = {"mean": round(statistics.fmean(scores), 4), "std": round(statistics.stdev(scores), 4)
                      if len(scores) > 1 else None, "per_seed": [round(s, 4) for s in scores]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="mini_vtab")
    ap.add_argument("--storage", default="runs/dvr.journal")
    ap.add_argument("--seeds", default="1,2,3", help="retraining seeds of each winner")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--search-seed", type=int, default=0, help="both searches' --seed")
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import optuna
    import torch

    from hybridsearch.search.results import best_trials, seed_scores
    from hybridsearch.search.run import run_options
    from hybridsearch.search.space import load_space
    from hybridsearch.search.study import RunOptions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    space = load_space(args.space)
    folder = Path(args.storage).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    rows: dict[str, Any] = {}
    t0 = time.perf_counter()
    default = run_options(RunOptions(study=f"{space.name}.default", storage=args.storage, space_ref=args.space,
                                     workers=args.workers, seed=args.search_seed, data_root=args.data_root),
                          log=log)
    compute = epochs_trained(default)
    per_trial = space.fidelity.epochs * len(space.search_tasks)
    trials = round(compute / per_trial)
    rnd_space = random_space(space, trials, args.search_seed, folder)
    rnd = run_options(RunOptions(study=f"{space.name}.random", storage=args.storage, space_ref=str(rnd_space),
                                 workers=args.workers, seed=args.search_seed, data_root=args.data_root), log=log)
    searched = time.perf_counter() - t0
    seeds = [int(s) for s in args.seeds.split(",")]
    for name, study in (("default", default), ("random", rnd)):
        w = best_trials(study)[0]
        log(f"retraining the {name} winner #{w.number} with seeds {seeds}")
        rows[name] = {"study": study.study_name, "epochs": epochs_trained(study),
                      "trials": len(study.trials), "winner_seed_scores": seed_scores(study)[w.number],
                      **retrain(space, w, seeds, args.data_root)}
    print(json.dumps({
        "benchmark": "the bundled default search vs random search at equal compute, winners retrained on test",
        "command": " ".join(["python", "benchmarks/bench_default_vs_random.py", *sys.argv[1:]]),
        "space": args.space, "compute_epochs": {"default": compute, "random": epochs_trained(rnd)},
        "retrain_seeds": seeds, "winners": rows,
        "test_gain": round(rows["default"]["test"]["mean"] - rows["random"]["test"]["mean"], 4),
        "seconds": {"searches": round(searched, 1), "all": round(time.perf_counter() - t0, 1)},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2), "workers": args.workers,
                    "torch": torch.__version__, "optuna": optuna.__version__},
    }, indent=2))


if __name__ == "__main__":
    main()
