"""A trial's training recipe (what a search space's ``recipe`` section sets or searches), its optimizer over the
per-method parameter groups of ``peft.param_groups`` and its learning-rate schedule: linear warm-up, then cosine
(or linear / constant) decay."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import TrialFailure
from ..peft import param_groups

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "linear", "constant")  # after the linear warm-up


@dataclass
class Recipe:
    """A trial's training recipe; a search space's ``recipe`` section sets (or searches) these fields."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    epochs: int = 10
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_epochs: float = 1.0
    min_lr: float = 1e-5
    grad_clip: float | None = None
    eval_batch_size: int = 256
    head_lr_mult: float = 1.0
    head_decay_mult: float = 1.0
    train_on_inputs: bool = True  # language trials only (training/lm.py): loss on the prompt tokens too

    @classmethod
    def from_dict(cls, d: dict | None) -> Recipe:
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


def optimizer_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 1.0,
                     head_decay_mult: float = 1.0) -> list[dict]:
    """``peft.param_groups`` with each group's ``initial_lr`` (the schedules scale it step by step); a model
    with nothing to train fails the trial."""
    groups = param_groups(model, lr, weight_decay, head_lr_mult, head_decay_mult)
    if not groups:
        raise TrialFailure("nothing to train: no parameter requires a gradient")
    for g in groups:
        g["initial_lr"] = g["lr"]
    return groups


def adamw(groups: list[dict]) -> torch.optim.AdamW:
    """AdamW (betas 0.9 / 0.999, eps 1e-8); on the CPU its fused kernel: one pass over all parameters instead of
    a dozen small ops per tensor (measured 9x faster a step on vim-proxy, benchmarks/RESULTS.md)."""
    params = [p for g in groups for p in g["params"]]
    if params and all(p.device.type == "cpu" and p.is_floating_point() for p in params):
        try:
            return torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, fused=True)
        except (RuntimeError, TypeError, ValueError):  # a torch without the fused CPU kernel
            pass
    return torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    groups = optimizer_groups(model, recipe.lr, recipe.weight_decay, recipe.head_lr_mult, recipe.head_decay_mult)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9)
    if recipe.optimizer != "adamw":
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    return adamw(groups)


def lr_factor(step: int, total: int, warmup: int, recipe: Recipe) -> float:
    """Linear warm-up from 1e-3 x lr (as the reference), then the schedule down to min_lr."""
    if warmup > 0 and step < warmup:
        return 1e-3 + (1 - 1e-3) * step / warmup
    if recipe.schedule == "constant":
        return 1.0
    t = (step - warmup) / max(total - warmup, 1)
    floor = recipe.min_lr / recipe.lr if recipe.lr > 0 else 0.0
    shape = 0.5 * (1 + math.cos(math.pi * t)) if recipe.schedule == "cosine" else 1 - t
    return floor + (1 - floor) * shape
