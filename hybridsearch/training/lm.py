"""Fine-tuning a Mamba LM on LLM-Adapters records with the MambaPEFT / LLM-Adapters recipe.

Alpaca prompt + output + EOS cut to ``cutoff_len`` tokens, loss on every token by default (``train_on_inputs``)
or on the response only, left padding to a multiple of 8, an effective batch of ``batch_size`` sequences made
of ``micro_batch_size`` pieces by gradient accumulation, AdamW with the per-method groups of
``peft.param_groups`` (``lr_mult`` / ``decay_mult``), linear warm-up then linear decay, gradient clipping at
1.0 (HF Trainer's ``max_grad_norm``). The loss is the token-weighted mean over the whole effective batch, so
it does not depend on how the batch is cut into micro-batches. A non-finite loss raises ``TrialFailure``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..data.commonsense import (
    IGNORE_INDEX,
    CommonsenseRecord,
    TokenizedExample,
    as_records,
    collate,
    tokenize_example,
)
from ..data.tokenizers import ByteTokenizer, TextTokenizer
from ..errors import TrialFailure
from ..peft import PeftConfig, after_optimizer_step
from .recipe import adamw, optimizer_groups

# README learning rates of MambaPEFT's language experiments (3e-4 for every other preset).
REFERENCE_LR: dict[str, float] = {"full": 5e-5, "lora_X": 1e-3, "additional_scan": 5e-3, "affix": 1e-4}
DEFAULT_LR = 3e-4


def reference_lr(config: PeftConfig | dict | None) -> float:
    """The reference lr of a single-method config (``None`` / no method: full fine-tuning), else 3e-4."""
    if config is None:
        return REFERENCE_LR["full"]
    methods = list((config.methods if isinstance(config, PeftConfig) else config.get("methods") or {}).keys())
    if not methods:
        return REFERENCE_LR["full"]
    return REFERENCE_LR.get(methods[0], DEFAULT_LR) if len(methods) == 1 else DEFAULT_LR


@dataclass
class LMRecipe:
    lr: float = DEFAULT_LR
    weight_decay: float = 0.0
    batch_size: int = 128  # effective batch (sequences per optimizer step)
    micro_batch_size: int = 4
    epochs: int = 3
    max_steps: int | None = None  # optimizer steps; caps ``epochs`` (small search budgets)
    warmup_steps: int = 100
    schedule: str = "linear"  # linear | cosine | constant
    cutoff_len: int | None = None  # None: the reference's 256 tokens, 1024 for the byte tokenizer (same text)
    train_on_inputs: bool = True
    add_eos: bool = True
    padding_side: str = "left"
    pad_to_multiple_of: int | None = 8
    pad_id: int | None = None  # None: the tokenizer's pad id (MambaPEFT sets GPT-NeoX's to 0)
    # sort each effective batch by length before cutting micro-batches: same gradient, far less padding
    sort_within_batch: bool = True
    grad_clip: float | None = 1.0
    eval_batch_size: int = 16

    @classmethod
    def from_dict(cls, d: dict | None) -> LMRecipe:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (d or {}).items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LMTrainResult:
    val_acc: float = float("nan")
    history: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # mean training loss per optimizer step
    train_loss: float = float("nan")  # mean over the last epoch
    seconds: float = 0.0
    steps: int = 0
    tokens: int = 0
    truncated: int = 0  # training examples cut at the cutoff before their end (EOS missing)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """HF ``get_linear_schedule_with_warmup`` (or cosine / constant after the warm-up), shifted by one step so
    that the first step does not run at lr 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    t = (step - warmup) / max(total - warmup, 1)
    return max(0.0, 1 - t) if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def lm_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled positions, and their count."""
    device = next(model.parameters()).device
    ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
    logits = model(ids)[:, :-1].float()
    target = labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")
    return loss, int((target != IGNORE_INDEX).sum())


def cutoff_for(tokenizer: TextTokenizer, recipe: LMRecipe) -> int:
    """The recipe's cutoff, or the reference's 256 GPT-NeoX tokens (about 1,000 bytes of English: the byte
    tokenizer gets 1024, so the proxy's 300-700 byte prompts are never cut before their answer)."""
    if recipe.cutoff_len is not None:
        return recipe.cutoff_len
    return 1024 if isinstance(tokenizer, ByteTokenizer) else 256


def _tokenize(records: Sequence[CommonsenseRecord], tok: TextTokenizer, r: LMRecipe) -> list[TokenizedExample]:
    cutoff = cutoff_for(tok, r)
    return [tokenize_example(x, tok, cutoff, train_on_inputs=r.train_on_inputs, add_eos=r.add_eos)
            for x in records]


def train_lm(
    model: nn.Module,
    tokenizer: TextTokenizer,
    train: Sequence[CommonsenseRecord | dict],
    recipe: LMRecipe | None = None,
    *,
    val: Sequence[CommonsenseRecord | dict] | None = None,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> LMTrainResult:
    """Fine-tune ``model`` (PEFT applied or not) on ``train``; after every epoch, when ``val`` is given, score it
    with the likelihood evaluator and call ``on_epoch(epoch, accuracy)`` (the search reports to the pruner
    there; it may raise ``optuna.TrialPruned``). ``progress(step, total, loss)`` follows every optimizer step."""
    from .lm_eval import likelihood_accuracy

    r = recipe or LMRecipe()
    if r.batch_size % r.micro_batch_size:
        raise ValueError(f"batch_size {r.batch_size} is not a multiple of micro_batch_size {r.micro_batch_size}")
    examples = _tokenize(as_records(train), tokenizer, r)
    val_records = as_records(val) if val is not None else None
    pad_id = tokenizer.pad_id if r.pad_id is None else r.pad_id
    groups = optimizer_groups(model, r.lr, r.weight_decay)
    opt = adamw(groups)
    trainable = [p for g in groups for p in g["params"]]
    steps_per_epoch = max(1, math.ceil(len(examples) / r.batch_size))
    total = steps_per_epoch * r.epochs if r.max_steps is None else min(r.max_steps, steps_per_epoch * r.epochs)
    warmup = min(r.warmup_steps, total // 10)  # the reference's 100 of ~4k steps; small budgets keep 10 %
    rng = random.Random(seed)
    cutoff = cutoff_for(tokenizer, r)
    result = LMTrainResult(truncated=sum(len(e.input_ids) >= cutoff and e.input_ids[-1] != tokenizer.eos_id
                                         for e in examples))
    start, step = time.perf_counter(), 0
    for epoch in range(r.epochs):
        if step >= total:
            break
        model.train()
        order = list(range(len(examples)))
        rng.shuffle(order)
        epoch_losses = []
        for s in range(steps_per_epoch):
            if step >= total:
                break
            batch = [examples[i] for i in order[s * r.batch_size : (s + 1) * r.batch_size]]
            loss = _step(model, opt, batch, pad_id, r, lr_factor(step, total, warmup, r.schedule), trainable)
            after_optimizer_step(model, last=step + 1 == total)  # a method's warm-up is part of the run
            if not math.isfinite(loss):
                raise TrialFailure(f"non-finite loss ({loss}) at epoch {epoch}, step {step}")
            epoch_losses.append(loss)
            result.losses.append(loss)
            result.tokens += sum(len(e.input_ids) for e in batch)
            step += 1
            if progress is not None:
                progress(step, total, loss)
        result.train_loss = sum(epoch_losses) / max(len(epoch_losses), 1)
        if val_records is not None:
            acc = likelihood_accuracy(model, tokenizer, val_records, batch_size=r.eval_batch_size)
            result.history.append(acc)
            result.val_acc = acc
            if on_epoch is not None:
                on_epoch(epoch, acc)
    result.seconds, result.steps = time.perf_counter() - start, step
    return result


def _step(model: nn.Module, opt: torch.optim.Optimizer, batch: list[TokenizedExample], pad_id: int,
          r: LMRecipe, factor: float, trainable: list[nn.Parameter]) -> float:
    """One optimizer step over an effective batch; returns its token-weighted mean loss."""
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * factor
    if r.sort_within_batch:
        batch = sorted(batch, key=lambda e: len(e.input_ids))
    micro = [collate(batch[i : i + r.micro_batch_size], pad_id, padding_side=r.padding_side,
                     pad_to_multiple_of=r.pad_to_multiple_of) for i in range(0, len(batch), r.micro_batch_size)]
    n_tokens = sum(int((m["labels"][:, 1:] != IGNORE_INDEX).sum()) for m in micro)
    if n_tokens == 0:
        raise TrialFailure("a batch has no labelled token (every example cut to nothing?)")
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for m in micro:
        loss_sum, _ = lm_loss_sum(model, m)
        if not torch.isfinite(loss_sum):
            return float("nan")
        (loss_sum / n_tokens).backward()
        total += loss_sum.item()
    if r.grad_clip:
        torch.nn.utils.clip_grad_norm_(trainable, r.grad_clip)
    opt.step()
    return total / n_tokens
