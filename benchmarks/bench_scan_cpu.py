"""CPU timings of the reference selective scan (forward, forward+backward), printed as JSON.

    .venv/bin/python benchmarks/bench_scan_cpu.py [--threads 2,1] [--repeats 5]

Shapes: a Vision-Mamba proxy (batch 64, dim 128, L 17, N 16), a mid-size LM layer and a long LM layer.
A naive autograd Python loop (mamba_ssm's ``selective_scan_ref`` style) is timed on the first shape.
Times are wall clock (median and min of the repeats after one warm-up); on a shared machine trust the min,
and compare the load average printed with the machine info. The 1-thread run is there because two threads
on two contended cores stall each other at every parallel op.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hybridsearch.kernels.selective_scan.reference import selective_scan_reference

SHAPES = [  # (batch, dim, L, N, label)
    (64, 128, 17, 16, "vim_proxy"),
    (8, 256, 256, 16, "lm_mid"),
    (2, 1536, 512, 16, "lm_long"),
]


def naive_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """Per-step autograd loop with einsums, as in mamba_ssm's selective_scan_ref (3-D B/C)."""
    delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, 2) + u * D[:, None]
    return y * F.silu(z)


def make(batch: int, dim: int, L: int, N: int, grad: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xs = [
        torch.randn(batch, dim, L, generator=g),  # u
        torch.randn(batch, dim, L, generator=g) - 2,  # delta (pre-softplus)
        -torch.rand(dim, N, generator=g) * 4 - 0.5,  # A
        torch.randn(batch, N, L, generator=g),  # B
        torch.randn(batch, N, L, generator=g),  # C
        torch.randn(dim, generator=g),  # D
        torch.randn(batch, dim, L, generator=g),  # z
        torch.randn(dim, generator=g) * 0.1,  # delta_bias
    ]
    return [x.requires_grad_(grad) for x in xs]


def timeit(fn: Callable[[], object], repeats: int, budget_s: float) -> dict[str, float]:
    """One warm-up, then up to `repeats` timed runs; stops early (after one) once budget_s is spent."""
    fn()
    ms: list[float] = []
    start = time.perf_counter()
    while len(ms) < repeats and (not ms or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": round(statistics.median(ms), 3), "min_ms": round(min(ms), 3), "runs": len(ms)}


def bench_shape(scan, batch: int, dim: int, L: int, N: int, repeats: int, budget_s: float) -> dict[str, dict]:
    xs = make(batch, dim, L, N, grad=False)
    with torch.no_grad():
        fwd = timeit(lambda: scan(*xs, True), repeats, budget_s)
    xs = make(batch, dim, L, N, grad=True)
    gout = torch.randn(batch, dim, L)

    def fwd_bwd() -> None:
        torch.autograd.grad(scan(*xs, True), xs, gout)

    return {"forward": fwd, "forward_backward": timeit(fwd_bwd, repeats, budget_s)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="2,1", help="comma-separated torch thread counts, run in order")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=3.0, help="time cap per measurement (keeps >= 1 run)")
    ap.add_argument("--max-total-s", type=float, default=90.0, help="split over thread counts; later shapes skipped")
    args = ap.parse_args()
    t0 = time.perf_counter()
    report: dict[str, object] = {
        "machine": {
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version(),
            "loadavg_1min_start": round(os.getloadavg()[0], 2),
        },
    }
    thread_counts = [int(t) for t in args.threads.split(",")]
    for threads in thread_counts:
        torch.set_num_threads(threads)
        run: dict[str, dict] = {"reference": {}, "naive_autograd_loop": {}}
        section_end = time.perf_counter() + args.max_total_s / len(thread_counts)
        for batch, dim, L, N, label in SHAPES:
            key = f"{label} (batch={batch}, dim={dim}, L={L}, N={N})"
            if time.perf_counter() > section_end:  # two threads on contended cores can take 100x longer
                run["reference"][key] = "skipped: --max-total-s spent"
                continue
            timing = (args.repeats, args.budget_s)
            run["reference"][key] = bench_shape(selective_scan_reference, batch, dim, L, N, *timing)
            if label == "vim_proxy":
                run["naive_autograd_loop"][key] = bench_shape(naive_scan, batch, dim, L, N, *timing)
        report[f"threads={torch.get_num_threads()}"] = run
    report["machine"]["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    report["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
