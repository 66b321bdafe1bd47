"""CPU training throughput of a small proxy Vim (d_model 64, depth 4, 16 patches + cls, batch 64).

Prints JSON: images/s for forward+backward+AdamW step, full fine-tuning and with LoRAp(X) + Additional-scan,
for d_state 8 (vim-proxy) and 16. Usage: python benchmarks/bench_train_cpu.py [--threads 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from hybridsearch import apply_peft
from hybridsearch.models import VimConfig, build
from hybridsearch.process import keep_freed_memory
from hybridsearch.training.recipe import Recipe, make_optimizer


def bench(d_state: int, peft: dict | None, steps: int, batch: int = 64) -> float:
    torch.manual_seed(0)
    model = build(VimConfig(d_model=64, depth=4, img_size=32, patch_size=8, d_state=d_state, num_classes=10,
                            drop_path_rate=0.0))
    if peft:
        apply_peft(model, peft)
    opt = make_optimizer(model, Recipe())
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    model.train()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLI and the search workers run (HYBRIDSEARCH_MALLOC=system: glibc's defaults)
    hybrid = {"methods": {"lora_X": {"rank": 8}, "additional_scan": {"states": 2}}}
    results = {
        f"N{n}_{name}": round(bench(n, cfg, args.steps), 1)
        for n in (8, 16) for name, cfg in (("full_ft", None), ("lorap_x+addscan", hybrid))
    }
    print(json.dumps({
        "benchmark": "vim proxy training throughput, images/s (fwd+bwd+AdamW), batch 64, 17 tokens",
        "images_per_s": results, "threads": args.threads, "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
