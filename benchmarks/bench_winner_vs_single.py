"""Does the searched hybrid beat the best single method? For a finished study of a space with ``baselines: true``,
re-train its winner, its best single-method trial and its base (every optional method off: head-only, or the
always-on methods alone) with several seeds: at the search's fidelity (train800 -> val200, the search's own score)
and on train800val200 -> test (scored once per seed). Prints JSON: per config the mean and std over seeds of the
mean accuracy over the tasks.

The winner is the study's best trial as ``show`` ranks it (with ``final``, by the mean over seeds); the single
method is the best trial of any single method over the whole study.

``--configs`` re-trains only some of them (``winner``, ``single``, ``base``), so that processes on several cores
share the work.

Usage: python benchmarks/bench_winner_vs_single.py --study mini_vtab [--storage URL] [--seeds 1,2,3]
       [--splits val,test] [--configs winner,single,base]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import optuna
import torch

from hybridsearch.search.results import baseline_comparison, seed_scores, single_methods
from hybridsearch.search.space import load_space
from hybridsearch.search.storage import open_storage
from hybridsearch.training.recipe import Recipe

CONFIGS = ("winner", "single", "base")  # what --configs may name


def score(space, tasks, trial: optuna.trial.FrozenTrial, epochs: int, seed: int) -> float:
    """Mean accuracy over ``tasks`` (train -> val) of the trial's config, trained by the space's task family."""
    recipe = Recipe.from_dict(trial.user_attrs["recipe"])
    recipe.epochs = epochs
    accs = []
    for task in tasks:
        torch.manual_seed(seed)
        model = space.family.build_model(space, task, trial.user_attrs["peft"])
        accs.append(space.family.train(space, model, task, recipe, seed))
    return sum(accs) / len(accs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", required=True)
    ap.add_argument("--storage", default=None)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--splits", default="val,test", help="val (the search's fidelity), test (all training data "
                                                           "-> test), or both")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="which configurations to re-train")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=open_storage(args.storage))
    cmp = baseline_comparison(study)
    if cmp is None:
        raise SystemExit(f"study {args.study!r} has no completed single-method baseline (space baselines: true)")
    space = load_space(study.user_attrs["space_ref"])
    family, fid = space.family, space.fidelity
    root = family.data_root(space, study.user_attrs.get("data_root"))
    search_tasks = family.load_tasks(space, root, max_train=fid.max_train_examples, max_val=fid.max_val_examples)
    test_tasks = family.load_tasks(space, root, final=True)  # all the training data, then test
    by_number = {t.number: t for t in study.trials}
    base = space.base_name()
    base_trial = single_methods(study).get(base) if base else None  # the best trial with no optional method on
    kinds = {"winner": ("winner", by_number[cmp["winner_trial"]]),
             "single": (f"single:{cmp['best_single_method']}", by_number[cmp["single_trial"]]),
             **({"base": (f"base:{base}", by_number[base_trial["trial"]])} if base_trial else {})}
    asked = [c.strip() for c in args.configs.split(",") if c.strip()]
    if unknown := sorted(set(asked) - set(CONFIGS)):
        raise SystemExit(f"--configs: unknown {', '.join(unknown)} (allowed: {', '.join(CONFIGS)})")
    configs = dict(kinds[c] for c in asked if c in kinds)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0, rows = time.perf_counter(), {}
    splits = {"val": search_tasks, "test": test_tasks}
    wanted = [x.strip() for x in args.splits.split(",") if x.strip() in splits]
    for name, trial in configs.items():
        rows[name] = {"trial": trial.number, "methods": list(trial.user_attrs["peft"]["methods"]),
                      "trainable": trial.user_attrs.get("trainable"), "search_score": trial.values[0],
                      "search_seed_scores": seed_scores(study).get(trial.number)}
        for split in wanted:
            got = [score(space, splits[split], trial, fid.epochs, s) for s in seeds]
            rows[name].update({f"{split}_mean": round(statistics.mean(got), 4),
                               f"{split}_std": round(statistics.pstdev(got), 4), split: [round(v, 4) for v in got]})
        print(f"{name}: {rows[name]}", flush=True)
    print(json.dumps({"study": args.study, "command": " ".join(["python", *sys.argv]),
                      "tasks": space.search_tasks, "epochs": fid.epochs, "seeds": seeds,
                      "configs": rows, "seconds": round(time.perf_counter() - t0, 1),
                      "threads": args.threads, "torch": torch.__version__}, indent=2))


if __name__ == "__main__":
    main()
