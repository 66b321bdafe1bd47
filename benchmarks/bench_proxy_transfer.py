"""Is the bundled vim-proxy a useful pretrained backbone? For every mini-VTAB task, train on train800val200
and score test once: linear probing, LoRAp(X) and full fine-tuning, on vim-proxy and on the same
architecture randomly initialised. Prints JSON (and a markdown table with --markdown).

Usage: python benchmarks/bench_proxy_transfer.py [--epochs 10] [--tasks mnist5k,rotation] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hybridsearch import apply_peft, create_model
from hybridsearch.data.mini_vtab import MINI_TASKS, ensure_mini_vtab
from hybridsearch.data.vtab import load_split, normalize, num_classes
from hybridsearch.training.classifier import evaluate, train_classifier
from hybridsearch.training.recipe import Recipe

SETTINGS = {
    "linear_probe": {"methods": {}},
    "lorap_x": {"methods": {"lora_X": {"rank": 8, "scale": 1.0}}},  # s=1: 0.1 barely moves in a few epochs
    "full_ft": None,
}


def run_one(task: str, root, pretrained: bool, setting: str, epochs: int, seed: int,
            checkpoint: str | None = None) -> float:
    torch.manual_seed(seed)
    n = num_classes(root, task)
    if pretrained and checkpoint:
        model = create_model("vim-proxy", num_classes=n, checkpoint=checkpoint)
    else:
        model = create_model("vim-proxy", num_classes=n, pretrained=pretrained)
    if SETTINGS[setting] is not None:
        apply_peft(model, SETTINGS[setting])
    Xtr, ytr = load_split(root, task, "train800val200", 32)
    Xte, yte = load_split(root, task, "test", 32)
    lr = 1e-3 if setting != "full_ft" else 5e-4
    recipe = Recipe(lr=lr, weight_decay=1e-4, batch_size=64, epochs=epochs, warmup_epochs=1)
    train_classifier(model, (normalize(Xtr), ytr), None, recipe, seed=seed)
    return evaluate(model, normalize(Xte), yte)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--tasks", default=",".join(MINI_TASKS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--checkpoint", default=None, help="a vim-proxy checkpoint instead of the bundled weights")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="subset of " + ", ".join(SETTINGS))
    ap.add_argument("--backbones", default="proxy,random", help="proxy, random or both")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = ensure_mini_vtab()
    rows, t0 = {}, time.perf_counter()
    for task in args.tasks.split(","):
        rows[task] = {
            f"{'proxy' if pre else 'random'}/{s}":
                round(run_one(task, root, pre, s, args.epochs, args.seed, args.checkpoint), 4)
            for pre in [b == "proxy" for b in args.backbones.split(",")] for s in args.settings.split(",")
        }
    cols = list(next(iter(rows.values())))
    mean = {c: round(sum(r[c] for r in rows.values()) / len(rows), 4) for c in cols}
    print(json.dumps({"epochs": args.epochs, "seed": args.seed, "test_accuracy": rows, "mean": mean,
                      "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__}, indent=2))
    if args.markdown:
        print("| task | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for task, r in {**rows, "mean": mean}.items():
            print(f"| {task} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
