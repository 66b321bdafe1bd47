"""Image classification on Vision Mamba: VTAB-1k trees in the NOAH layout (``vtab``) and the embedded mini-VTAB
(``mini_vtab``, built from data that ships inside pip packages on first use).

A split is decoded once into memory and normalised (``data.vtab``); every task gets a fresh model with its own
zero head sized to the task's classes; trials train with ``training.classifier.train_classifier``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..data import vtab
from ..errors import DataError
from ..models import create_model, model_config
from ..peft import apply_peft
from ..training.classifier import evaluate, train_classifier
from ..training.recipe import Recipe
from .base import OnEpoch, TaskData, TaskFamily

Images = tuple[Tensor, Tensor]
FINAL_SPLITS = ("train800val200", "test")  # the winner: all 1,000 training images, then test once


def _mini_tasks() -> dict[str, Any]:
    from ..data.mini_vtab import MINI_TASKS

    return MINI_TASKS


class VisionFamily(TaskFamily):
    name = "vision"
    data_kinds = ("vtab", "mini_vtab")
    model_kind = "vim"
    splits = vtab.SPLITS
    default_splits = ("train800", "val200")
    has_head = True

    def _table(self, kind: str) -> dict[str, Any]:
        return vtab.VTAB_TASKS if kind == "vtab" else _mini_tasks()

    def known_tasks(self, kind: str) -> tuple[str, ...]:
        return tuple(self._table(kind))

    def task_classes(self, kind: str, task: str) -> int | None:
        t = self._table(kind).get(task)
        return t.num_classes if t is not None else None

    def data_root(self, space: Any, override: str | Path | None) -> Path:
        root = override or space.data.root
        if space.data.kind == "mini_vtab" and not root:
            from ..data.mini_vtab import ensure_mini_vtab

            return ensure_mini_vtab()
        if not root or not Path(root).is_dir():
            raise DataError(
                f"{space.source}: data.root {root!r} does not exist; pass --data-root DIR pointing at the VTAB-1k "
                "folder (docs/data.md), or run the embedded default: hybridsearch run --space mini_vtab"
            )
        return Path(root)

    def check_data(self, space: Any, override: str | Path | None) -> None:
        """Every line of the search splits parses, its label is in range and its image decodes."""
        if space.data.kind == "mini_vtab" and not (override or space.data.root):
            return  # built (and verified) on first use
        root = self.data_root(space, override)
        d = space.data
        entries = [e for task in space.search_tasks for split in (d.train_split, d.val_split)
                   for e in vtab.split_entries(root, task, split)]
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            # nothing is kept; DataError names the list file, line and image of the first bad one
            for _ in pool.map(lambda e: vtab.decode_image(e, None) is None, entries):
                pass

    def load_tasks(self, space: Any, root: Path, *, tasks: list[str] | None = None, max_train: int | None = None,
                   max_val: int | None = None, final: bool = False) -> list[TaskData[Images]]:
        train_split, val_split = FINAL_SPLITS if final else (space.data.train_split, space.data.val_split)
        size = getattr(model_config(space.model.name), "img_size", 224)
        out = []
        for task in tasks or space.search_tasks:
            Xtr, ytr = vtab.load_split(root, task, train_split, size)
            Xva, yva = vtab.load_split(root, task, val_split, size)
            Xtr, ytr, Xva, yva = Xtr[:max_train], ytr[:max_train], Xva[:max_val], yva[:max_val]
            out.append(TaskData(task, vtab.num_classes(root, task), (vtab.normalize(Xtr), ytr),
                                (vtab.normalize(Xva), yva)))
        return out

    def build_model(self, space: Any, task: TaskData, peft: dict[str, Any], device: str = "cpu") -> nn.Module:
        model = create_model(space.model.name, num_classes=task.num_classes, checkpoint=space.model.checkpoint)
        return apply_peft(model.to(device), peft)

    def train(self, space: Any, model: nn.Module, task: TaskData[Images], recipe: Recipe, seed: int,
              on_epoch: OnEpoch | None = None) -> float:
        if on_epoch is not None:
            return train_classifier(model, task.train, task.val, recipe, seed=seed, on_epoch=on_epoch).val_acc
        train_classifier(model, task.train, None, recipe, seed=seed)
        return evaluate(model, *task.val, batch_size=recipe.eval_batch_size)
