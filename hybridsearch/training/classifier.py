"""The image classifier loop (Vim) shared by search trials, vim-proxy pretraining and export --retrain.

One epoch over in-memory tensors (a VTAB-1k task is 1,000 small images: decoding once and keeping the
batch tensors in memory is far cheaper than a DataLoader per epoch), with the optimizer and schedule of the
``Recipe`` (recipe.py) and bf16 autocast on CUDA. A non-finite loss raises ``TrialFailure`` so the search fails
that trial only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TrialFailure
from ..peft import after_optimizer_step
from .recipe import Recipe, lr_factor, make_optimizer


@dataclass
class TrainResult:
    val_acc: float
    history: list[float] = field(default_factory=list)
    train_loss: float = float("nan")
    seconds: float = 0.0
    steps: int = 0


@torch.no_grad()
def evaluate(model: nn.Module, X: Tensor, y: Tensor, batch_size: int = 256) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(X), batch_size):
        xb = X[i : i + batch_size].to(device, non_blocking=True)
        with _autocast(device):
            logits = model(xb)
        correct += (logits.argmax(-1).cpu() == y[i : i + batch_size]).sum().item()
    return correct / max(len(X), 1)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train_classifier(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor] | None,
    recipe: Recipe,
    *,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    augment: Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]] | None = None,
) -> TrainResult:
    """Train ``model`` on (X, y) tensors; evaluate ``val`` after every epoch and call ``on_epoch(epoch, acc)``
    (the search reports to the pruner there; it may raise ``optuna.TrialPruned``). ``augment(xb, yb, gen)``
    returns a transformed training batch (pretraining: random shifts, flips and a rotation pretext)."""
    Xtr, ytr = train
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model, recipe)
    steps_per_epoch = max(1, math.ceil(len(Xtr) / recipe.batch_size))
    total = steps_per_epoch * recipe.epochs
    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    trainable = [p for g in opt.param_groups for p in g["params"]]
    result = TrainResult(val_acc=float("nan"))
    start, step = time.perf_counter(), 0
    for epoch in range(recipe.epochs):
        model.train()
        perm = torch.randperm(len(Xtr), generator=gen)
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            xb, yb = Xtr[idx], ytr[idx]
            if augment is not None:
                xb, yb = augment(xb, yb, gen)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            f = lr_factor(step, total, warmup, recipe)
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * f
            with _autocast(device):
                loss = F.cross_entropy(model(xb).float(), yb)
            if not torch.isfinite(loss):
                raise TrialFailure(f"non-finite loss ({loss.item()}) at epoch {epoch}, step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, recipe.grad_clip)
            opt.step()
            after_optimizer_step(model, last=step + 1 == total)  # a method's warm-up is part of the run
            loss_sum += loss.item()
            step += 1
            if progress is not None:
                progress(step, total)
        result.train_loss = loss_sum / steps_per_epoch
        if val is not None:
            acc = evaluate(model, *val, batch_size=recipe.eval_batch_size)
            result.history.append(acc)
            result.val_acc = acc
            if on_epoch is not None:
                on_epoch(epoch, acc)
    result.seconds, result.steps = time.perf_counter() - start, step
    return result
