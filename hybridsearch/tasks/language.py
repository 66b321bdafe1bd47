"""Commonsense reasoning on a Mamba LM: LLM-Adapters files (``commonsense``), by default the bundled WordNet
task set that ``hybridsearch pretrain commonsense-proxy`` builds.

A search trains on the mixed training file restricted to the label sets of the space's tasks, less a seeded
held-out part it scores by likelihood ranking (one ``TaskData`` for all tasks: the file mixes them, as the
paper's 170k set does). The winner is retrained on all of it and scored once on each task's ``test.json``.
Trials train with the MambaPEFT / LLM-Adapters recipe of ``training.lm``.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from torch import nn

from ..data import commonsense as cs
from ..data.tokenizers import TextTokenizer
from ..errors import DataError
from ..peft import apply_peft
from ..training import lm as lm_training
from ..training.lm_eval import likelihood_accuracy
from ..training.lm_loading import load_lm, resolve_tokenizer
from ..training.recipe import Recipe
from .base import OnEpoch, TaskData, TaskFamily

Records = list[cs.CommonsenseRecord]
FULL_TRAIN_FILE = "commonsense_170k.json"  # the paper's file, read when the proxy's is absent
DEFAULT_VAL = 300  # held-out records scored per trial (at most a fifth of the training records)


def _model_ref(space: Any) -> str:
    return str(space.model.checkpoint or space.model.name)


@functools.lru_cache(maxsize=4)
def _tokenizer(ref: str) -> TextTokenizer:
    return resolve_tokenizer(ref)


class LanguageFamily(TaskFamily):
    name = "language"
    data_kinds = ("commonsense",)
    model_kind = "lm"
    splits = ("train", "val")
    default_splits = ("train", "val")
    has_head = False  # with every method off nothing would train: no head-only baseline
    calibrates = False

    def known_tasks(self, kind: str) -> tuple[str, ...]:
        return cs.TASKS

    def data_root(self, space: Any, override: str | Path | None) -> Path:
        root = override or space.data.root
        if not root:
            return cs.BUNDLED_ROOT
        if not Path(root).is_dir():
            raise DataError(f"{space.source}: data.root {root!r} does not exist; pass --data-root DIR holding "
                            f"{cs.TRAIN_FILE} or {FULL_TRAIN_FILE} and dataset/<task>/test.json (docs/language.md)")
        return Path(root)

    def check_data(self, space: Any, override: str | Path | None) -> None:
        """The training file is there (its records are checked as they load)."""
        self._train_file(self.data_root(space, override))

    def _train_file(self, root: Path) -> Path:
        for name in (cs.TRAIN_FILE, FULL_TRAIN_FILE):
            if (root / name).is_file():
                return root / name
        raise DataError(f"{root}: neither {cs.TRAIN_FILE} nor {FULL_TRAIN_FILE} found (LLM-Adapters training file)")

    def load_tasks(self, space: Any, root: Path, *, tasks: list[str] | None = None, max_train: int | None = None,
                   max_val: int | None = None, final: bool = False) -> list[TaskData[Records]]:
        wanted = {cs.canonical_task(t) for t in tasks or space.search_tasks}
        path = self._train_file(root)
        records = [r for r in cs.load_records(path) if wanted & set(cs.record_tasks(r))]
        if not records:
            raise DataError(f"{path}: no training record matches the tasks {sorted(wanted)}")
        if final:
            train, val = records, [r for t in sorted(wanted) for r in cs.load_test(root, t)]
        else:
            val_size = min(max_val or DEFAULT_VAL, len(records) // 5)
            train, val = cs.split_train_val(records, val_size=val_size, seed=42)
        return [TaskData("+".join(sorted(wanted)), 0, train[:max_train], val)]

    def build_model(self, space: Any, task: TaskData, peft: dict[str, Any], device: str = "cpu") -> nn.Module:
        model, _ = load_lm(_model_ref(space), device=device)
        return apply_peft(model, peft)

    def train(self, space: Any, model: nn.Module, task: TaskData[Records], recipe: Recipe, seed: int,
              on_epoch: OnEpoch | None = None) -> float:
        """The search recipe sets lr, decay, epochs and the effective batch (micro-batches of at most 16); the
        rest is the reference's (linear decay after warm-up, gradient clipping at 1.0)."""
        tokenizer = _tokenizer(_model_ref(space))
        r = lm_training.LMRecipe(
            lr=recipe.lr, weight_decay=recipe.weight_decay, epochs=recipe.epochs, batch_size=recipe.batch_size,
            micro_batch_size=math.gcd(recipe.batch_size, 16),
            schedule="linear" if recipe.schedule == "cosine" else recipe.schedule,
            train_on_inputs=recipe.train_on_inputs)
        val = task.val if on_epoch is not None else None
        res = lm_training.train_lm(model, tokenizer, task.train, r, val=val, seed=seed, on_epoch=on_epoch)
        if val is not None and res.history:
            return res.val_acc
        return likelihood_accuracy(model, tokenizer, task.val)
