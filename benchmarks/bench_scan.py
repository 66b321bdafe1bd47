"""GPU timings of the selective scan backends and of a Vim-S PEFT training step, printed as JSON.

    .venv/bin/python benchmarks/bench_scan.py [--repeats 20] [--warmup 5] [--skip-train] [--backends ...]
    .venv/bin/python benchmarks/bench_scan.py --smoke     # CPU, Triton interpreter, tiny shapes

Scan shapes (bf16 u/delta/z/B/C; fp32 A/D/delta_bias; z gate, D skip, delta_bias + softplus, as the mixers
call it): Vim-S one direction (64, 768, 197) at N 16, 32 and 22 (Additional-scan 16 + 6), a Mamba-130M layer
(8, 1536, 2048, 16) and a Mamba-1.4B layer (4, 4096, 2048, 16). "forward" is a training forward (inputs
require grad, so the Triton kernel saves its chunk states); "forward_backward" adds the backward with a fixed
output gradient. Times: CUDA events around each call after warm-up, median and min over the repeats.

Each Triton time is also given as a fraction of the physical floors of shared/docs/kernels.md, section 4
(floor_ms / triton_ms, so 1.0 would be at the floor) and against the measured mamba-ssm CUDA anchor of
h200-anchor.json (anchor_ms / triton_ms, > 1 means faster than mamba-ssm was on the H200).

Without a CUDA device it prints {"error": ...} and exits with status 2 (except in --smoke mode).
"""

from __future__ import annotations

import os
import sys

if "--smoke" in sys.argv:  # the interpreter must be switched on before triton (and torch) are imported
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ANCHOR_PATHS = [
    Path(__file__).resolve().parents[1] / "shared/docs/h200-anchor.json",
]
# Fallback copy of the anchor's mamba-ssm CUDA medians (ms) where the file is not reachable.
ANCHOR_FALLBACK = {
    "vim_s": {"cuda_fwd_ms": 0.3960, "cuda_fwd_bwd_ms": 1.5931},
    "vim_s_N32": {"cuda_fwd_ms": 0.7223, "cuda_fwd_bwd_ms": 2.9039},
    "mamba130m": {"cuda_fwd_ms": 0.4490, "cuda_fwd_bwd_ms": 2.1951},
    "mamba1p4b": {"cuda_fwd_ms": 0.5918, "cuda_fwd_bwd_ms": 2.8857},
}

# shared/docs/kernels.md section 4.1 (assumptions): H200 HBM total traffic rate, MUFU exp2 rate, FP32 instruction rate.
HBM_BPS = 4.3e12
MUFU_PER_S = 3.9e12
FP32_PER_S = 3.35e13
# shared/docs/kernels.md section 4.4 (compute side): FP32 instructions per (b, l, d, n) of a sequential register scan.
FP32_FWD, FP32_BWD = 4, 14

SHAPES = [  # label, batch, dim, L, N, anchor key in h200-anchor.json
    ("vim_s", 64, 768, 197, 16, "vim_s"),
    ("vim_s_N32", 64, 768, 197, 32, "vim_s_N32"),
    ("vim_s_N22", 64, 768, 197, 22, None),
    ("mamba130m_layer", 8, 1536, 2048, 16, "mamba130m"),
    ("mamba1p4b_layer", 4, 4096, 2048, 16, "mamba1p4b"),
]
SMOKE_SHAPES = [("smoke_N16", 1, 8, 6, 16, "vim_s"), ("smoke_N22", 1, 8, 5, 22, None)]


def floors_ms(batch: int, dim: int, L: int, N: int, s: int = 2) -> dict[str, float]:
    """Lower bounds (ms) per shared/docs/kernels.md section 4: HBM traffic (4.1), MUFU exps and FP32 instructions (4.4).

    HBM, z fused, h recomputed: forward 4 BLD s + 2 BNL s; backward 7 BLD s + 2 BNL s + 2 BNL 4 (fp32 dB, dC).
    MUFU: one exp per (b, l, d, n) in the forward and again in the backward's recompute.
    Combined: per phase the max of the three, forward + backward the sum of the two phases (section 4.4).
    """
    bld, bnl, elems = batch * L * dim, batch * N * L, batch * L * dim * N
    hbm_f = (4 * bld * s + 2 * bnl * s) / HBM_BPS
    hbm_b = (7 * bld * s + 2 * bnl * s + 2 * bnl * 4) / HBM_BPS
    mufu = elems / MUFU_PER_S
    fp_f, fp_b = FP32_FWD * elems / FP32_PER_S, FP32_BWD * elems / FP32_PER_S
    ms = 1e3
    return {
        "hbm_fwd_ms": hbm_f * ms, "hbm_fwd_bwd_ms": (hbm_f + hbm_b) * ms,
        "combined_fwd_ms": max(hbm_f, mufu, fp_f) * ms,
        "combined_fwd_bwd_ms": (max(hbm_f, mufu, fp_f) + max(hbm_b, mufu, fp_b)) * ms,
    }


def timer(device: torch.device) -> Callable[[Callable[[], object], int, int], dict[str, float]]:
    def run(fn: Callable[[], object], warmup: int, repeats: int) -> dict[str, float]:
        for _ in range(warmup):
            fn()
        ms: list[float] = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                ms.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                ms.append((time.perf_counter() - t0) * 1e3)
        return {"median_ms": statistics.median(ms), "min_ms": min(ms), "runs": len(ms)}

    return run


def scan_fns() -> dict[str, Callable | str]:
    """Backend name -> callable with selective_scan_fn's signature, or the reason it is unavailable."""
    ss = importlib.import_module("hybridsearch.kernels.selective_scan")
    fns: dict[str, Callable | str] = {
        "triton": lambda *a, **k: ss.selective_scan(*a, backend="triton", **k),
        "reference": lambda *a, **k: ss.selective_scan(*a, backend="reference", **k),
    }
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        fns["mamba_ssm"] = selective_scan_fn
    except Exception as e:  # not installed, or its CUDA extension does not load
        fns["mamba_ssm"] = f"unavailable: {type(e).__name__}: {e}"
    return fns


def make_inputs(batch: int, dim: int, L: int, N: int, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale + shift).to(device=device, dtype=dt).requires_grad_()

    return [
        rnd(batch, dim, L),  # u
        rnd(batch, dim, L, scale=0.5, shift=-2.0),  # delta before bias and softplus
        (-(torch.rand(dim, N, generator=g) * 4 + 0.5)).to(device).requires_grad_(),  # A (fp32)
        rnd(batch, N, L), rnd(batch, N, L),  # B, C
        rnd(dim, dt=torch.float32),  # D
        rnd(batch, dim, L),  # z
        rnd(dim, scale=0.1, dt=torch.float32),  # delta_bias
    ]


def bench_scan(fn: Callable, xs: list[torch.Tensor], run, warmup: int, repeats: int) -> dict[str, dict]:
    u, delta, A, B, C, D, z, bias = xs
    gout = torch.randn_like(u)

    def fwd() -> torch.Tensor:
        return fn(u, delta, A, B, C, D, z, bias, True)

    def fwd_bwd() -> None:
        torch.autograd.grad(fwd(), xs, gout)

    return {"forward": run(fwd, warmup, repeats), "forward_backward": run(fwd_bwd, warmup, repeats)}


def scan_section(device: torch.device, shapes, backends: list[str], warmup: int, repeats: int,
                 ref_repeats: int) -> dict[str, dict]:
    found = [p for p in ANCHOR_PATHS if p.is_file()]
    anchor = json.loads(found[0].read_text())["shapes"] if found else ANCHOR_FALLBACK
    fns = scan_fns()
    run = timer(device)
    out: dict[str, dict] = {}
    for label, batch, dim, L, N, akey in shapes:
        xs = make_inputs(batch, dim, L, N, device, torch.bfloat16)
        row: dict[str, object] = {"shape": {"batch": batch, "dim": dim, "L": L, "N": N, "dtype": "bfloat16"}}
        for name in backends:
            fn = fns.get(name, "unknown backend")
            if isinstance(fn, str):
                row[name] = fn
                continue
            try:
                slow = name == "reference"
                row[name] = bench_scan(fn, xs, run, 1 if slow else warmup, ref_repeats if slow else repeats)
            except Exception as e:  # e.g. out of memory for the reference at the 1.4B shape
                row[name] = f"failed: {type(e).__name__}: {e}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        fl = floors_ms(batch, dim, L, N)
        row["floors_ms"] = fl
        tri = row.get("triton")
        if isinstance(tri, dict):
            f_ms, fb_ms = tri["forward"]["median_ms"], tri["forward_backward"]["median_ms"]
            row["triton_frac_of_floor"] = {
                "hbm_fwd": fl["hbm_fwd_ms"] / f_ms, "hbm_fwd_bwd": fl["hbm_fwd_bwd_ms"] / fb_ms,
                "combined_fwd": fl["combined_fwd_ms"] / f_ms, "combined_fwd_bwd": fl["combined_fwd_bwd_ms"] / fb_ms,
            }
            a = anchor.get(akey) if akey else None
            if a:
                row["mamba_ssm_anchor_h200_ms"] = {"fwd": a["cuda_fwd_ms"], "fwd_bwd": a["cuda_fwd_bwd_ms"]}
                row["triton_speedup_vs_anchor"] = {"fwd": a["cuda_fwd_ms"] / f_ms,
                                                   "fwd_bwd": a["cuda_fwd_bwd_ms"] / fb_ms}
        out[label] = row
    return out


def train_section(device: torch.device, backends: list[str], warmup: int, repeats: int, ref_repeats: int,
                  smoke: bool) -> dict[str, object]:
    """One optimizer step of Vim-S (24 layers, d_model 384, batch 64) with LoRAp(X) + Additional-scan + Affix."""
    from hybridsearch import apply_peft, create_model
    from hybridsearch.models import VimConfig, build

    if smoke:
        model, batch, img = build(VimConfig(d_model=16, depth=2, img_size=16, patch_size=4, d_state=4,
                                            num_classes=5, drop_path_rate=0.0), device), 2, 16
    else:
        model, batch, img = create_model("vim-small", num_classes=100, pretrained=False, device=device), 64, 224
    peft = {"methods": {"lora_X": {"rank": 8}, "additional_scan": {"states": 6}, "affix": {"tokens": 3}}}
    apply_peft(model, peft)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, img, img, generator=g).to(device)
    y = torch.randint(0, model.head.out_features, (batch,), generator=g).to(device)
    amp = device.type == "cuda"  # bf16 autocast as in training; the interpreter smoke run stays fp32

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    run = timer(device)
    res: dict[str, object] = {"model": "vim-small" if not smoke else "tiny vim", "batch": batch, "peft": peft,
                              "trainable_params": sum(p.numel() for p in params)}
    for name in backends:
        for m in model.mixers:
            m.scan_backend = name
        try:
            slow = name == "reference"
            res[name] = run(step, 1 if slow else warmup, ref_repeats if slow else repeats)
        except Exception as e:  # e.g. mamba_ssm not installed or no project wrapper for it
            res[name] = f"failed: {type(e).__name__}: {e}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU run under TRITON_INTERPRET=1 at tiny shapes")
    ap.add_argument("--backends", default="triton,reference,mamba_ssm")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--ref-repeats", type=int, default=3, help="repeats for the (slow) reference backend")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    backends = args.backends.split(",")
    if args.smoke:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        shapes, warmup, repeats, ref_repeats = SMOKE_SHAPES, 0, 1, 1
        backends = [b for b in backends if b != "mamba_ssm"]  # CUDA only
    elif not torch.cuda.is_available():
        print(json.dumps({"error": "needs a CUDA GPU (torch.cuda.is_available() is False); try --smoke on CPU"}))
        return 2
    else:
        device = torch.device("cuda")
        shapes, warmup, repeats, ref_repeats = SHAPES, args.warmup, args.repeats, args.ref_repeats
    report: dict[str, object] = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (triton interpreter)",
        "smoke": args.smoke,
    }
    try:
        import triton

        report["triton"] = triton.__version__
    except Exception as e:
        report["triton"] = f"unavailable: {e}"
    try:
        report["scan"] = scan_section(device, shapes, backends, warmup, repeats, ref_repeats)
        if not args.skip_train:
            train_repeats = 1 if args.smoke else max(3, repeats // 4)
            report["train_step"] = train_section(device, backends, warmup, train_repeats, ref_repeats, args.smoke)
    except Exception as e:
        report["error"] = f"{type(e).__name__}: {e}"
        report["traceback"] = traceback.format_exc()
        print(json.dumps(report, indent=1))
        return 1
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
