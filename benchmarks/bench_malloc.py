"""Training steps with glibc's malloc as hybridsearch sets it (``hybridsearch.process.keep_freed_memory``) against
glibc's defaults (``HYBRIDSEARCH_MALLOC=system``): prints JSON.

    python benchmarks/bench_malloc.py [--rounds 6] [--steps 20]

Each measurement is a fresh interpreter (malloc settings are per process) that trains vim-proxy (batch 64, full
fine-tuning) or mamba-proxy (micro-batches of 8 commonsense-proxy records, full fine-tuning) for a few warm-up
steps and then ``--steps`` timed ones, on the ``cpu`` or the ``reference`` scan backend, one thread. The two
settings alternate round after round, so that a machine whose speed drifts is compared with itself: the ratios
are per round (tuned / defaults), then their median. Also reported: minor page faults per step and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = [("vim-proxy", "cpu"), ("vim-proxy", "reference"), ("mamba-proxy", "cpu"), ("mamba-proxy", "reference")]


def child(model: str, backend: str, steps: int) -> dict:
    """Runs in the measured interpreter: median step ms, page faults per step, peak RSS."""
    import torch

    from hybridsearch.process import keep_freed_memory

    applied = keep_freed_memory()
    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    if model == "vim-proxy":
        from bench_cpu import vim_training_step

        x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
        step = vim_training_step(None, backend, x, y)
    else:
        from bench_cpu import lm_training_step

        step, _ = lm_training_step(None, backend, 8)
    for _ in range(3):
        step()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ms = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        ms.append((time.perf_counter() - t0) * 1e3)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"applied": applied, "median_ms": statistics.median(ms),
            "faults_per_step": (usage.ru_minflt - faults0) / steps, "max_rss_mib": usage.ru_maxrss / 1024}


def measure(model: str, backend: str, steps: int, system: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HYBRIDSEARCH_MALLOC"} | {"OMP_NUM_THREADS": "1"}
    if system:
        env["HYBRIDSEARCH_MALLOC"] = "system"
    out = subprocess.run([sys.executable, __file__, "--child", model, backend, str(steps)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement (mamba-proxy: half)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        model, backend, steps = args.child
        print(json.dumps(child(model, backend, int(steps))))
        return
    t0 = time.perf_counter()
    report: dict[str, object] = {"machine": {"processor": platform.processor() or platform.machine(),
                                             "cpu_count": os.cpu_count(), "python": platform.python_version(),
                                             "loadavg_start": os.getloadavg()}}
    results = {}
    for model, backend in CASES:
        steps = args.steps if model == "vim-proxy" else max(4, args.steps // 2)
        runs: dict[str, list[dict]] = {"glibc_defaults": [], "keep_freed_memory": []}
        for _ in range(args.rounds):
            runs["glibc_defaults"].append(measure(model, backend, steps, system=True))
            runs["keep_freed_memory"].append(measure(model, backend, steps, system=False))
        ratios = [t["median_ms"] / d["median_ms"] for d, t in zip(runs["glibc_defaults"], runs["keep_freed_memory"])]
        results[f"{model}, {backend} backend"] = {
            name: {"median_step_ms": round(statistics.median(r["median_ms"] for r in rs), 2),
                   "faults_per_step": round(statistics.median(r["faults_per_step"] for r in rs), 1),
                   "max_rss_mib": round(statistics.median(r["max_rss_mib"] for r in rs), 1),
                   "applied": rs[0]["applied"]}
            for name, rs in runs.items()
        } | {"ratio_per_round": [round(x, 3) for x in ratios], "ratio_median": round(statistics.median(ratios), 3)}
    report["results"] = results
    report["machine"]["loadavg_end"] = os.getloadavg()  # type: ignore[index]
    report["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
