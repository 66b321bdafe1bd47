"""Do the later state-space methods (SDT, state-offset, output-offset and initial-state tuning) help on the proxies?

For one domain (``vision``: mini_vtab on vim-proxy; ``language``: the mixed commonsense tasks on mamba-proxy), with
the space ``benchmarks/beyond/<domain>.yaml``:

* **each method alone**: every later method and MambaPEFT's best single method on the proxy (``--best-single``:
  conv1d-tuning on mini_vtab, Additional-scan on the mixed tasks, both measured in benchmarks/RESULTS.md) tuned
  with an equal share of the compute (``--single-trials`` trials of the space's sampler over its parameters and
  the lr, alone: ``optional: false``, every other method removed); the best trial's configuration is then
  trained once per ``--seeds`` seed on all the training data and scored once on test;
* **the hybrid search**: the space with MambaPEFT's methods only against the space with the later ones added, at
  equal compute (the same number of trials, sampler, pruner and fidelity), once per ``--seeds`` seed (the
  sampler's and the trials'); each search's winner trained on all the training data with that seed and scored
  once on test.

Scores are the mean accuracy over the space's tasks. Every study lives in ``--storage``, every test score is
cached in ``--out``/<domain>.json as soon as it exists: a killed run continues where it stopped, and a copy of
the cache alone (without the storage) resumes on another machine, losing only the studies still running.
Prints JSON.
``--part`` runs one part only (``single``, ``mambapeft`` or ``with_later``), so that processes on several cores
share the work: they share the storage and the cache (merged under a lock on every save); the JSON is printed by
whichever finds every part done.

Usage: python benchmarks/bench_beyond_mambapeft.py --domain vision [--seeds 0,1,2] [--single-trials 6]
       [--search-trials 16] [--test-epochs N] [--storage runs/beyond.journal] [--out runs/beyond] [--smoke]
       [--part single|mambapeft|with_later]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
LATER = ("sdt", "state_offset", "output_offset", "init_state")
BEST_SINGLE = {"vision": "tune_conv1d", "language": "additional_scan"}
PARTS = ("single", "mambapeft", "with_later")


def space_variant(base: dict, name: str, methods: list[str], trials: int, folder: Path, alone: bool) -> Path:
    """``base`` with only ``methods`` (alone: the one method always on) and ``trials`` trials, as a YAML file."""
    d = json.loads(json.dumps(base))
    d["methods"] = {m: dict(d["methods"][m] or {}) for m in methods}
    if alone:
        (m,) = methods
        d["methods"][m]["optional"] = False
    d.update(name=name, trials=trials)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def test_score(study: Any, seed: int, data_root: str | None, epochs: int | None = None,
               limit: int | None = None) -> dict[str, Any]:
    """The study's best trial trained with ``seed`` on all the training data of each task (``limit``: its first
    examples only, for --smoke) for ``epochs`` (default: the search's fidelity), scored once on test."""
    import torch

    from hybridsearch.search.results import best_trials
    from hybridsearch.search.space import load_space
    from hybridsearch.training.recipe import Recipe

    trial = best_trials(study)[0]
    space = load_space(study.user_attrs["space_ref"])
    family = space.family
    tasks = family.load_tasks(space, family.data_root(space, data_root), final=True)
    recipe = Recipe.from_dict(trial.user_attrs["recipe"])
    recipe.epochs = epochs or space.fidelity.epochs
    accs = {}
    for task in tasks:
        if limit:
            task = dataclasses.replace(task, train=task.train[:limit] if isinstance(task.train, list)
                                       else tuple(t[:limit] for t in task.train))
        torch.manual_seed(seed)
        model = family.build_model(space, task, trial.user_attrs["peft"])
        accs[task.name] = family.train(space, model, task, recipe, seed)
    return {"trial": trial.number, "search_score": trial.values[0], "peft": trial.user_attrs["peft"],
            "lr": trial.user_attrs["recipe"].get("lr"), "trainable": trial.user_attrs.get("trainable"),
            "seed": seed, "test": sum(accs.values()) / len(accs), "per_task": accs}


def run_study(path: Path, study: str, storage: str, seed: int, data_root: str | None) -> tuple[Any, dict]:
    import hybridsearch as hs

    t0 = time.perf_counter()
    s = hs.run_search(str(path), study=study, storage=storage, seed=seed, workers=1, data_root=data_root)
    epochs = sum(len(t.intermediate_values) for t in s.get_trials(deepcopy=False))
    return s, {"study": study, "trials": len(s.trials), "epochs": epochs,
               "pruned": sum(t.state.name == "PRUNED" for t in s.trials), "seconds": round(time.perf_counter() - t0)}


def summary(scores: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.mean(scores), 4), "std": round(statistics.pstdev(scores), 4), "n": len(scores)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domain", choices=sorted(BEST_SINGLE), required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--single-trials", type=int, default=None, help="default: 6 (vision), 2 (language)")
    ap.add_argument("--search-trials", type=int, default=None, help="default: the space's own trials")
    ap.add_argument("--best-single", default=None, help="MambaPEFT's best single method on this proxy")
    ap.add_argument("--storage", default="runs/beyond.journal")
    ap.add_argument("--out", default="runs/beyond")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--test-epochs", type=int, default=None,
                    help="epochs of the final training before the test (default: the search's fidelity)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="1 trial, 1 seed, 1 epoch: checks the script runs")
    ap.add_argument("--part", choices=PARTS, default=None, help="run this part only (default: all)")
    args = ap.parse_args()

    # the engine gives each worker its share of the cores unless OMP_NUM_THREADS says otherwise: several
    # --part processes side by side must not each take every core
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import optuna
    import torch

    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = yaml.safe_load((HERE / "beyond" / f"{args.domain}.yaml").read_text())
    seeds = [int(s) for s in args.seeds.split(",")]
    single_trials = args.single_trials or (6 if args.domain == "vision" else 2)
    search_trials = args.search_trials or base["trials"]
    limit = None
    if args.smoke:
        seeds, single_trials, search_trials, limit = seeds[:1], 1, 1, 64
        base["fidelity"].update(epochs=1, max_train_examples=64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / f"{args.domain}{'-smoke' if args.smoke else ''}.json"
    cache: dict[str, Any] = {}
    tag = f"{args.domain}{'-smoke' if args.smoke else ''}"

    @contextlib.contextmanager
    def locked_cache() -> Any:
        """The cache as on disk, merged into ``cache``, under an exclusive lock (other --part processes)."""
        with open(cache_path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if cache_path.is_file():
                cache.update(json.loads(cache_path.read_text()))
            yield
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache, indent=2) + "\n")
            tmp.replace(cache_path)

    def cached(key: str, fn: Any) -> Any:
        with locked_cache():
            pass
        if key not in cache:
            value = fn()
            with locked_cache():
                cache[key] = value
            print(f"{key}: {json.dumps(value)[:300]}", flush=True)
        return cache[key]

    def load(study_name: str) -> Any:  # only for a test not cached yet: a cache alone resumes without the storage
        return optuna.load_study(study_name=study_name, storage=_storage(args.storage))

    mamba_peft = [m for m in base["methods"] if m not in LATER]
    best = args.best_single or BEST_SINGLE[args.domain]
    t0 = time.perf_counter()
    # -- each method alone, tuned with the same number of trials ---------------------------------------------
    for method in [best, *LATER] if args.part in (None, "single") else []:
        path = space_variant(base, f"{tag}.single.{method}", [method], single_trials, out, alone=True)
        study_name = f"{tag}.single.{method}"

        def tune(path: Path = path, study_name: str = study_name) -> dict:
            return run_study(path, study_name, args.storage, 0, args.data_root)[1]

        cached(f"single/{method}/study", tune)
        for seed in seeds:
            cached(f"single/{method}/test/{seed}",
                   lambda study_name=study_name, seed=seed: test_score(load(study_name), seed, args.data_root,
                                                                       args.test_epochs, limit))
    # -- the hybrid search, with and without the later methods ------------------------------------------------
    for variant, methods in (("mambapeft", mamba_peft), ("with_later", list(base["methods"]))):
        if args.part not in (None, variant):
            continue
        path = space_variant(base, f"{tag}.search.{variant}", methods, search_trials, out, alone=False)
        for seed in seeds:
            study_name = f"{tag}.search.{variant}.s{seed}"
            cached(f"search/{variant}/{seed}/study",
                   lambda path=path, study_name=study_name, seed=seed: run_study(path, study_name, args.storage, seed,
                                                                               args.data_root)[1])
            cached(f"search/{variant}/{seed}/test",
                   lambda study_name=study_name, seed=seed: test_score(load(study_name), seed, args.data_root,
                                                                       args.test_epochs, limit))
    with locked_cache():
        pass
    wanted = [f"single/{m}/test/{s}" for m in [best, *LATER] for s in seeds]
    wanted += [f"search/{v}/{s}/test" for v in PARTS[1:] for s in seeds]
    if missing := [k for k in wanted if k not in cache]:
        print(json.dumps({"done": args.part, "missing": missing}))
        return
    result = {
        "domain": args.domain, "seeds": seeds, "single_trials": single_trials, "search_trials": search_trials,
        "single": {m: {"test": summary([cache[f"single/{m}/test/{s}"]["test"] for s in seeds]),
                       "config": cache[f"single/{m}/test/{seeds[0]}"]["peft"],
                       "lr": cache[f"single/{m}/test/{seeds[0]}"]["lr"],
                       "trainable": cache[f"single/{m}/test/{seeds[0]}"]["trainable"],
                       "study": cache[f"single/{m}/study"]} for m in [best, *LATER]},
        "search": {v: {"test": summary([cache[f"search/{v}/{s}/test"]["test"] for s in seeds]),
                       "val": summary([cache[f"search/{v}/{s}/test"]["search_score"] for s in seeds]),
                       "winners": [{k: cache[f"search/{v}/{s}/test"][k] for k in ("peft", "lr", "trainable", "test")}
                                   for s in seeds],
                       "epochs": [cache[f"search/{v}/{s}/study"]["epochs"] for s in seeds],
                       "seconds": [cache[f"search/{v}/{s}/study"]["seconds"] for s in seeds]}
                   for v in ("mambapeft", "with_later")},
        "test_epochs": args.test_epochs or base["fidelity"]["epochs"],
        "seconds_this_run": round(time.perf_counter() - t0), "threads": args.threads, "torch": torch.__version__,
        "python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))


def _storage(storage: str) -> Any:
    from hybridsearch.search.storage import open_storage

    return open_storage(storage)


if __name__ == "__main__":
    main()
