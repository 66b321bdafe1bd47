"""The ``cpu`` backend against the reference on a CPU, side by side in one run, printed as one JSON.

    OMP_NUM_THREADS=1 python benchmarks/bench_cpu.py [--threads 1] [--repeats 7] [--main-command] [--no-vim-s]

Sections (each pair measured interleaved, reference then cpu, repeat after repeat, so both see the same load;
median and min of the repeats and the ratio of the medians):

* ``scan``: the selective scan's forward and forward + backward (every input's gradient) at the vim-proxy
  shape (64, 128, 17, 8), the language proxy's (8, 256, 256, 16) and Vim-S's (64, 768, 197, 16), with D, z,
  delta_bias and softplus as the mixers call it; inputs laid out as the mixers pass them (channels innermost)
  and, for the first two shapes, contiguous (batch, dim, L) too.
* ``conv``: the mixer's depthwise causal conv1d + SiLU, forward + backward, at the vim-proxy shape.
* ``projections``: the mixers' projections (``kernels.linear``, what the cpu backend calls) against ``F.linear``
  (the reference's), forward + backward with both gradients, at the proxies' dt_proj and in_proj shapes.
* ``vim_proxy_training``: images/s of a vim-proxy-sized Vim (d_model 64, depth 4, 16 patches + cls, d_state 8,
  batch 64): forward + backward + the recipe's AdamW, full fine-tuning and LoRAp(X) + Additional-scan.
* ``vim_proxy_eval``: ms per batch of 64 of the forward pass without gradients.
* ``mamba_proxy_training``: real tokens/s of the bundled mamba-proxy through the language trainer's own step
  (micro-batches of 8 of the commonsense proxy records, AdamW), full fine-tuning and LoRAp(X) r8.
* ``adamw_step``: the fused AdamW against the for-loop one, one step over vim-proxy's parameters.
* ``main_command`` (``--main-command``, minutes): wall time of ``hybridsearch run --space mini_vtab`` (the README
  main command's search; mini-VTAB already built) in a fresh folder, with HYBRIDSEARCH_SCAN_BACKEND set to each
  backend for the whole process tree.

"reference" runs the whole model on the reference backend (PyTorch scan, ``F.conv1d``); everything else (the
mixer without flips, the fused AdamW, glibc's malloc set as the CLI sets it: ``hybridsearch.process``) is the same
for both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hybridsearch import apply_peft
from hybridsearch.kernels import causal_conv1d, selective_scan
from hybridsearch.models import VimConfig, build
from hybridsearch.models.layers import RMSNorm
from hybridsearch.process import keep_freed_memory
from hybridsearch.training.recipe import Recipe, make_optimizer

BACKENDS = ("reference", "cpu")
SCAN_SHAPES = [(64, 128, 17, 8, "vim_proxy"), (8, 256, 256, 16, "mamba_proxy"), (64, 768, 197, 16, "vim_s")]
HYBRID = {"methods": {"lora_X": {"rank": 8}, "additional_scan": {"states": 2}}}


def paired(fns: dict[str, Callable[[], object]], repeats: int, per_repeat: int = 1) -> dict[str, dict]:
    """Times each function (after one warm-up each), alternating them repeat after repeat; ms per call."""
    for fn in fns.values():
        fn()
    ms: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(per_repeat):
                fn()
            ms[k].append((time.perf_counter() - t0) * 1e3 / per_repeat)
    out = {k: {"median_ms": round(statistics.median(v), 3), "min_ms": round(min(v), 3)} for k, v in ms.items()}
    names = list(fns)
    if len(names) == 2:
        out["speedup_median"] = round(out[names[0]]["median_ms"] / out[names[1]]["median_ms"], 2)
    return out


def scan_inputs(batch: int, dim: int, L: int, N: int, grad: bool, layout: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def seq(shift: float = 0.0) -> torch.Tensor:  # (batch, dim, L), channels innermost as the mixers pass it
        x = torch.randn(batch, L, dim, generator=g) + shift
        return x.transpose(1, 2) if layout == "model" else x.transpose(1, 2).contiguous()

    def bc() -> torch.Tensor:
        x = torch.randn(batch, L, N, generator=g)
        return x.transpose(1, 2) if layout == "model" else x.transpose(1, 2).contiguous()

    xs = [seq(), seq(-2.0), -torch.rand(dim, N, generator=g) * 4 - 0.5, bc(), bc(), torch.randn(dim, generator=g),
          seq(), torch.randn(dim, generator=g) * 0.1]  # u, delta, A, B, C, D, z, delta_bias
    return [x.requires_grad_(grad) for x in xs]


def bench_scan(repeats: int, vim_s: bool) -> dict[str, dict]:
    res: dict[str, dict] = {}
    for batch, dim, L, N, label in SCAN_SHAPES:
        if label == "vim_s" and not vim_s:
            continue
        for layout in ("model", "contiguous") if label != "vim_s" else ("model",):
            key = f"{label} (batch={batch}, dim={dim}, L={L}, N={N}), {layout} layout"
            reps = max(3, repeats // 2) if label == "vim_s" else repeats
            xs = scan_inputs(batch, dim, L, N, False, layout)
            with torch.no_grad():
                fwd = paired({b: lambda b=b, xs=xs: selective_scan(*xs, True, backend=b) for b in BACKENDS}, reps)
            xg = scan_inputs(batch, dim, L, N, True, layout)
            gout = scan_inputs(batch, dim, L, N, False, layout)[6]  # the output's gradient, laid out as the inputs

            def fwd_bwd(b: str, xs: list[torch.Tensor] = xg, gout: torch.Tensor = gout) -> None:
                torch.autograd.grad(selective_scan(*xs, True, backend=b), xs, gout)

            fb = paired({b: lambda b=b: fwd_bwd(b) for b in BACKENDS}, reps)
            res[key] = {"forward": fwd, "forward_backward": fb}
    return res


def bench_conv(repeats: int) -> dict[str, dict]:
    g = torch.Generator().manual_seed(0)
    xz = torch.randn(64, 17, 256, generator=g)
    x = xz[..., :128].transpose(1, 2).requires_grad_()
    w, b = torch.randn(128, 1, 4, generator=g).requires_grad_(), torch.randn(128, generator=g).requires_grad_()
    gout = torch.randn(64, 128, 17)

    def run(backend: str) -> None:
        torch.autograd.grad(causal_conv1d(x, w, b, backend=backend), [x, w, b], gout)

    return {"vim_proxy (64, 128, 17), K 4, forward_backward": paired({k: lambda k=k: run(k) for k in BACKENDS},
                                                                     repeats, per_repeat=5)}


# (tokens, in_features, out_features): vim-proxy's batch of 64 x 17 tokens, the language proxy's 8 x 256
PROJ_SHAPES = [(1088, 4, 128, "vim_proxy dt_proj"), (1088, 64, 256, "vim_proxy in_proj"),
               (2048, 8, 256, "mamba_proxy dt_proj"), (2048, 128, 512, "mamba_proxy in_proj")]


def bench_projections(repeats: int) -> dict[str, dict]:
    from hybridsearch.kernels import linear

    g = torch.Generator().manual_seed(0)
    res: dict[str, dict] = {}
    for M, K, N, label in PROJ_SHAPES:
        x = torch.randn(M, K, generator=g, requires_grad=True)
        w = torch.randn(N, K, generator=g, requires_grad=True)
        gout = torch.randn(M, N, generator=g)
        fns = {name: lambda f=f, x=x, w=w, gout=gout: torch.autograd.grad(f(x, w), [x, w], gout)
               for name, f in (("F.linear", F.linear), ("kernels.linear", linear))}
        res[f"{label} ({M} x {K} -> {N}), forward_backward"] = paired(fns, repeats, per_repeat=5)
    return res


def vim_proxy(peft: dict | None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build(VimConfig(d_model=64, depth=4, img_size=32, patch_size=8, d_state=8, num_classes=10,
                            drop_path_rate=0.0))
    return apply_peft(model, peft) if peft else model


def _set_backend(model: torch.nn.Module, backend: str) -> None:
    """Every kernel of the model on ``backend``: the mixers' (scan, conv, projections) and the RMSNorms'."""
    for m in model.modules():
        if hasattr(m, "scan_backend"):
            m.scan_backend = backend
        if isinstance(m, RMSNorm):
            m.backend = backend


def vim_training_step(peft: dict | None, backend: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One AdamW training step of a fresh vim-proxy (with ``peft``) on the batch (x, y), scan by ``backend``."""
    model = vim_proxy(peft)
    _set_backend(model, backend)
    opt = make_optimizer(model, Recipe())
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_vim_training(repeats: int, steps: int) -> dict[str, dict]:
    res: dict[str, dict] = {}
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    for name, peft in (("full_ft", None), ("lorap_x+addscan", HYBRID)):
        runs = {backend: vim_training_step(peft, backend, x, y) for backend in BACKENDS}
        t = paired(runs, repeats, per_repeat=steps)
        res[name] = {b: {"images_per_s": round(64e3 / t[b]["median_ms"], 1),
                         "images_per_s_best": round(64e3 / t[b]["min_ms"], 1), **t[b]} for b in BACKENDS}
        res[name]["speedup_median"] = t["speedup_median"]
    return res


def bench_vim_eval(repeats: int) -> dict[str, dict]:
    x = torch.randn(64, 3, 32, 32)
    models = {}
    for backend in BACKENDS:
        models[backend] = vim_proxy(None).eval()
        _set_backend(models[backend], backend)

    def run(backend: str) -> None:
        with torch.no_grad():
            models[backend](x)

    return {"batch 64, no grad": paired({b: lambda b=b: run(b) for b in BACKENDS}, repeats, per_repeat=5)}


def lm_training_step(peft: dict | None, backend: str, n_batches: int) -> tuple[Callable[[], None], float]:
    """One AdamW step of the language trainer (``_step``) on a fresh mamba-proxy (with ``peft``), scan by
    ``backend``, cycling over ``n_batches`` micro-batches of 8 commonsense-proxy records; and the mean real
    (unpadded) tokens of those batches but the first (the warm-up's)."""
    from hybridsearch.data.commonsense import BUNDLED_ROOT, TRAIN_FILE, load_records
    from hybridsearch.training.lm import LMRecipe, _step, _tokenize
    from hybridsearch.training.lm_loading import load_lm
    from hybridsearch.training.recipe import adamw, optimizer_groups

    r = LMRecipe(batch_size=8, micro_batch_size=8)
    torch.manual_seed(0)
    model, tok = load_lm("mamba-proxy", device="cpu")
    if peft:
        apply_peft(model, peft)
    _set_backend(model, backend)
    examples = _tokenize(load_records(BUNDLED_ROOT / TRAIN_FILE)[: 8 * n_batches], tok, r)
    batches = [examples[i : i + 8] for i in range(0, len(examples), 8)]
    groups = optimizer_groups(model, 1e-4, 0.0)
    opt = adamw(groups)
    trainable = [p for g in groups for p in g["params"]]
    model.train()
    it = iter(range(10**9))

    def step() -> None:
        _step(model, opt, batches[next(it) % len(batches)], tok.pad_id, r, 1.0, trainable)

    return step, statistics.mean(sum(len(e.input_ids) for e in b) for b in batches[1:])


def bench_lm_training(repeats: int) -> dict[str, dict]:
    res: dict[str, dict] = {}
    for name, peft in (("full_ft", None), ("lora_X_r8", {"methods": {"lora_X": {"rank": 8}}})):
        runs, tokens = {}, {}
        for backend in BACKENDS:  # the first batch warms up
            runs[backend], tokens[backend] = lm_training_step(peft, backend, repeats + 1)
        # both backends see the same batches in the same order: real (unpadded) tokens per timed step
        t = paired(runs, repeats, per_repeat=1)
        res[name] = {b: {"tokens_per_s": round(tokens[b] * 1e3 / t[b]["median_ms"], 1), **t[b]} for b in BACKENDS}
        res[name]["speedup_median"] = t["speedup_median"]
    return res


def bench_adamw(repeats: int) -> dict[str, dict]:
    model = vim_proxy(None)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    from hybridsearch.training.recipe import optimizer_groups

    opts = {"for_loop": torch.optim.AdamW(optimizer_groups(model, 1e-3, 1e-4), foreach=False),
            "fused": torch.optim.AdamW(optimizer_groups(model, 1e-3, 1e-4), fused=True)}
    return {"vim_proxy parameters": paired({k: o.step for k, o in opts.items()}, repeats, per_repeat=20)}


def bench_main_command(repeats: int) -> dict[str, dict]:
    """`hybridsearch run --space mini_vtab` in a fresh folder per run, the backend set for the whole process."""
    cmd = [sys.executable, "-c", "import sys; from hybridsearch.cli import main; sys.exit(main(sys.argv[1:]))",
           "run", "--space", "mini_vtab"]
    secs: dict[str, list[float]] = {b: [] for b in BACKENDS}
    for _ in range(repeats):
        for backend in BACKENDS:
            with tempfile.TemporaryDirectory() as tmp:
                env = {**os.environ, "HYBRIDSEARCH_SCAN_BACKEND": backend}
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
                secs[backend].append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    raise SystemExit(f"main command failed with {backend}: {proc.stderr[-2000:]}")
    out = {b: {"median_s": round(statistics.median(v), 1), "min_s": round(min(v), 1), "runs": len(v)}
           for b, v in secs.items()}
    out["speedup_median"] = round(out["reference"]["median_s"] / out["cpu"]["median_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--train-steps", type=int, default=4, help="vim-proxy steps per timed repeat")
    ap.add_argument("--no-vim-s", action="store_true", help="skip the Vim-S scan shape (the slowest)")
    ap.add_argument("--main-command", action="store_true", help="also time the README main command's search")
    ap.add_argument("--main-repeats", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    malloc = keep_freed_memory()  # as the CLI and the search workers run (HYBRIDSEARCH_MALLOC=system: glibc's)
    from hybridsearch.kernels.selective_scan import cpu

    if not cpu.available():
        raise SystemExit("the cpu backend is unavailable here (see the warning above)")
    t0 = time.perf_counter()
    report: dict[str, object] = {"machine": {
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "loadavg_start": os.getloadavg(),
        "malloc": "keep_freed_memory" if malloc else "glibc defaults", "kernel_threads": cpu.threading_runtime(),
    }}
    report["scan"] = bench_scan(args.repeats, not args.no_vim_s)
    report["conv"] = bench_conv(args.repeats)
    report["projections"] = bench_projections(args.repeats)
    report["vim_proxy_training"] = bench_vim_training(args.repeats, args.train_steps)
    report["vim_proxy_eval"] = bench_vim_eval(args.repeats)
    report["mamba_proxy_training"] = bench_lm_training(args.repeats)
    report["adamw_step"] = bench_adamw(args.repeats)
    if args.main_command:
        report["main_command"] = bench_main_command(args.main_repeats)
    report["machine"]["loadavg_end"] = os.getloadavg()  # type: ignore[index]
    report["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
