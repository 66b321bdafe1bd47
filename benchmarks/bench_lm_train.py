"""LM training throughput of ``mamba-proxy`` (byte-level, 0.5 M parameters) on the bundled commonsense_proxy
training records, through the real trainer step (``lm.train._step``: micro-batches with left padding to a
multiple of 8, token-weighted loss, gradient clipping, AdamW with the PEFT parameter groups).

Prints JSON: tokens/s (real tokens, pads excluded) for forward+backward+AdamW, per configuration: full fine-tuning,
LoRAp(X) r8, Affix-tuning, Additional-scan, and the frozen model without PEFT (forward only: the evaluation
cost, since nothing can be trained). CPU always; CUDA too when available.

    OMP_NUM_THREADS=1 python benchmarks/bench_lm_train.py --threads 1 [--steps 5] [--batch 32] [--micro 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from hybridsearch import apply_peft
from hybridsearch.data.commonsense import BUNDLED_ROOT, TRAIN_FILE, collate, load_records
from hybridsearch.peft import param_groups
from hybridsearch.process import keep_freed_memory
from hybridsearch.training.lm import LMRecipe, _step, _tokenize
from hybridsearch.training.lm_loading import load_lm
from hybridsearch.training.recipe import adamw

CONFIGS: dict[str, dict | None] = {
    "full_ft": None,
    "lora_X_r8": {"methods": {"lora_X": {"rank": 8}}},
    "affix": {"methods": {"affix": {}}},
    "additional_scan": {"methods": {"additional_scan": {}}},
}


def bench(peft: dict | None, frozen: bool, device: str, steps: int, batch: int, micro: int) -> dict:
    torch.manual_seed(0)
    model, tok = load_lm("mamba-proxy", device=device)
    if peft:
        apply_peft(model, peft)
    r = LMRecipe(batch_size=batch, micro_batch_size=micro)
    examples = _tokenize(load_records(BUNDLED_ROOT / TRAIN_FILE)[: batch * (steps + 1)], tok, r)
    batches = [examples[i * batch : (i + 1) * batch] for i in range(steps + 1)]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if frozen:  # no PEFT, nothing trainable: the forward pass alone (what evaluation costs)
        model.eval()

        def run(b: list) -> None:
            with torch.no_grad():
                for i in range(0, len(b), micro):
                    m = collate(sorted(b, key=lambda e: len(e.input_ids))[i : i + micro], tok.pad_id,
                                padding_side="left", pad_to_multiple_of=8)
                    model(m["input_ids"].to(device))
    else:
        groups = param_groups(model, 1e-4, 0.0)
        for g in groups:
            g["initial_lr"] = g["lr"]
        opt = adamw(groups)  # the trainer's own optimizer (fused on the CPU)
        trainable = [p for g in groups for p in g["params"]]
        model.train()

        def run(b: list) -> None:
            _step(model, opt, b, tok.pad_id, r, 1.0, trainable)

    run(batches[0])  # warm-up (allocations, kernel selection)
    sync()
    t = time.perf_counter()
    for b in batches[1:]:
        run(b)
    sync()
    dt = time.perf_counter() - t
    tokens = sum(len(e.input_ids) for b in batches[1:] for e in b)
    return {"tokens_per_s": round(tokens / dt, 1), "seconds": round(dt, 2), "tokens": tokens,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad) if not frozen else 0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps (after one warm-up step)")
    ap.add_argument("--batch", type=int, default=32, help="sequences per optimizer step")
    ap.add_argument("--micro", type=int, default=8, help="sequences per forward/backward (gradient accumulation)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLI and the search workers run (HYBRIDSEARCH_MALLOC=system: glibc's defaults)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results: dict[str, dict] = {}
    for device in devices:
        for name, cfg in CONFIGS.items():
            results[f"{device}/{name}"] = bench(cfg, False, device, args.steps, args.batch, args.micro)
            print(json.dumps({f"{device}/{name}": results[f"{device}/{name}"]}), flush=True)
        results[f"{device}/frozen_forward"] = bench(None, True, device, args.steps, args.batch, args.micro)
    print(json.dumps({
        "benchmark": "mamba-proxy LM training throughput, real tokens/s (fwd+bwd+AdamW; frozen: forward only)",
        "results": results, "batch": args.batch, "micro_batch": args.micro, "steps": args.steps,
        "threads": args.threads, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "load_average": os.getloadavg(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }, indent=2))


if __name__ == "__main__":
    main()
