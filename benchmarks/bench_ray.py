"""Ray engine overhead against the Optuna engine on the same tiny trials, and the 1 -> 2 concurrent speed-up.

Every run searches the same seeded space (vim-proxy, one Mini-VTAB task, 2 epochs on 32 images, random
sampler), one torch thread per trial. Measured:

* ``optuna``: the Optuna engine, one in-process worker (no start-up cost at all);
* ``ray_1`` / ``ray_2``: the Ray engine with 1 and 2 concurrent trials on one local Ray instance (2 CPUs),
  after ``ray_cold`` (2 concurrent on the fresh instance: it pays the Ray workers' first imports);
* ``ray_init_s`` / ``ray_shutdown_s``: starting and stopping that local instance.

``per_trial_s`` is the steady-state time per trial (the first two trials, which pay imports and caches, are
left out); ``outside_objective_s`` the median time a trial spends between ask and tell outside the objective
(scheduling, storage, result transfer), which is far less noisy on a shared machine. ``overhead_*`` = ray_1
minus optuna; ``speedup_1_to_2`` = ray_1 / ray_2 steady-state time per trial.
Prints JSON. Usage: python benchmarks/bench_ray.py [--trials 10] [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

SPACE = """
name: bench_ray
model: {name: vim-proxy, checkpoint: null}
data: {kind: mini_vtab, tasks: [mnist5k]}
objectives: [accuracy, params]
trials: %d
fidelity: {epochs: 2, max_train_examples: 32, max_val_examples: 32}
sampler: {kind: random, seed: 0}
recipe: {lr: {log: [1.0e-2, 1.0e-1]}, batch_size: 16, warmup_epochs: 0}
methods:
  lora_X:
    params: {scale: 0.1}
    layer_groups:
      - {layers: "0-1", rank: [0, 4, 8]}
      - {layers: "2-3", rank: {int: [4, 8], step: 4}}
  affix: {params: {tokens: {int: [1, 2]}, projection: false}}
  tune_D: {optional: false}
"""


def timed(fn) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def summarise(study, wall: float, warm: int = 2) -> dict:
    ends = sorted(t.datetime_complete.timestamp() for t in study.trials)
    steady = (ends[-1] - ends[warm - 1]) / (len(ends) - warm) if len(ends) > warm else float("nan")
    busy = [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials]
    outside = [b - t.user_attrs["timings"]["total"] for b, t in zip(busy, study.trials)][warm:]
    return {"wall_s": round(wall, 2), "trials": len(ends), "per_trial_s": round(steady, 3),
            "median_trial_s": round(statistics.median(busy), 3),
            "objective_s": round(statistics.median(t.user_attrs["timings"]["total"] for t in study.trials[warm:]), 3),
            "outside_objective_s": round(statistics.median(outside), 3),
            "states": sorted({t.state.name for t in study.trials})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # one thread per trial in both engines (Ray sets it per 1-CPU task)

    import optuna
    import ray
    import torch

    from hybridsearch.search.optuna_engine import run_study
    from hybridsearch.search.ray_engine import RayOptions, run_ray_study
    from hybridsearch.search.study import RunOptions

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    space = work / "space.yaml"
    space.write_text(SPACE % args.trials)

    def opts(name: str) -> RunOptions:
        return RunOptions(study=name, storage=str(work / "bench.journal"), space_ref=str(space), seed=0)

    ray_temp = tempfile.mkdtemp(prefix="hsray-", dir="/tmp")

    def local_ray() -> float:
        _, s = timed(lambda: ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                                      _temp_dir=ray_temp, logging_level=logging.WARNING))
        return s

    runs: dict = {"optuna": timed(lambda: run_study(opts("optuna")))}
    init_s = local_ray()
    for name, k in (("ray_cold", 2), ("ray_1", 1), ("ray_2", 2)):
        runs[name] = timed(lambda name=name, k=k: run_ray_study(opts(name), RayOptions(max_concurrent=k)))
    _, shutdown_s = timed(ray.shutdown)
    res = {name: summarise(*run) for name, run in runs.items()}
    params = {name: [t.params for t in study.trials] for name, (study, _) in runs.items()}
    same = all(p == params["optuna"] for p in params.values())
    for folder in (work, ray_temp):
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps({
        "benchmark": "Ray engine vs Optuna engine, tiny vim-proxy trials (2 epochs x 32 images), 1 thread/trial",
        **res,
        "ray_init_s": round(init_s, 2), "ray_shutdown_s": round(shutdown_s, 2),
        "overhead_per_trial_s": round(res["ray_1"]["per_trial_s"] - res["optuna"]["per_trial_s"], 3),
        "overhead_outside_objective_s": round(res["ray_1"]["outside_objective_s"]
                                              - res["optuna"]["outside_objective_s"], 3),
        "speedup_1_to_2": round(res["ray_1"]["per_trial_s"] / res["ray_2"]["per_trial_s"], 2),
        "same_configurations": same,
        "cores": os.cpu_count(), "load_avg_1_5_15min": [round(x, 2) for x in os.getloadavg()],
        "versions": {"ray": ray.__version__, "optuna": optuna.__version__, "torch": torch.__version__},
        "cpu": platform.processor() or platform.machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
