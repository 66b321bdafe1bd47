"""One search trial: sample a hybrid, check its exact size against the budget, train it on every task's
train split at the space's fidelity, score it on the val split (never test), report to the pruner."""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from ..errors import DataError, HybridSearchError
from ..models import create_model
from ..peft import apply_peft, count_parameters
from ..train import Recipe, TrialFailure, train_classifier
from .space import check_budget


@dataclass
class TaskData:
    name: str
    num_classes: int
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]


def data_root(space, override: str | None) -> Path:
    """Where the space's tasks live; mini-VTAB is built on first use."""
    data = space.data
    if data.kind == "mini_vtab" and not (override or data.root):
        from ..data.mini_vtab import ensure_mini_vtab

        return ensure_mini_vtab()
    root = override or data.root
    if not root or not Path(root).is_dir():
        raise DataError(
            f"{space.source}: data.root {root!r} does not exist; pass --data-root DIR pointing at the VTAB-1k "
            "folder (see README: Quick start, real VTAB-1k), or run the embedded default: "
            "hybridsearch run --space mini_vtab"
        )
    return Path(root)


def load_tasks(space, root: Path, image_size: int, max_train: int | None, tasks: list[str] | None = None,
               train_split: str | None = None, val_split: str | None = None,
               max_val: int | None = None) -> list[TaskData]:
    from ..data.vtab import load_split, normalize, num_classes

    out = []
    for task in tasks or space.search_tasks:
        Xtr, ytr = load_split(root, task, train_split or space.data.train_split, image_size)
        Xva, yva = load_split(root, task, val_split or space.data.val_split, image_size)
        if max_train:
            Xtr, ytr = Xtr[:max_train], ytr[:max_train]
        if max_val:
            Xva, yva = Xva[:max_val], yva[:max_val]
        out.append(TaskData(task, num_classes(root, task), (normalize(Xtr), ytr), (normalize(Xva), yva)))
    return out


def _img_size(space) -> int:
    from ..models import model_config

    return getattr(model_config(space.model.name), "img_size", 224)


def _fidelity(space, key: str, default: Any = None) -> Any:
    return getattr(space.fidelity, key, default) if space.fidelity is not None else default


class Objective:
    """Callable for ``study.optimize``; raises ``TrialPruned`` or ``TrialFailure`` to end a trial early."""

    def __init__(self, space, tasks: list[TaskData], device: str = "cpu", seed: int = 0) -> None:
        self.space, self.tasks, self.device, self.seed = space, tasks, device, seed

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        t0 = time.perf_counter()
        trial.set_user_attr("worker", {"host": os.uname().nodename, "pid": os.getpid()})
        sampled = self.space.sample(trial)
        seed = self.seed + trial.number
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("peft", sampled.peft.to_dict())
        trial.set_user_attr("recipe", dict(sampled.recipe))
        recipe = Recipe.from_dict(sampled.recipe)
        epochs = _fidelity(self.space, "epochs", recipe.epochs)
        recipe.epochs = int(epochs)
        trial.set_user_attr("fidelity", {"epochs": recipe.epochs, "tasks": [t.name for t in self.tasks],
                                         "train_examples": [len(t.train[1]) for t in self.tasks]})
        within, counts = check_budget(self.space, sampled.peft)  # exact counts, before any training
        trial.set_user_attr("counts", counts)
        trial.set_user_attr("trainable", counts["trainable"])
        if not within:
            b = self.space.budget
            reason = f"over budget: {counts['budgeted']:,} trainable vs [{b.min_trainable}, {b.max_trainable}]"
            trial.set_user_attr("failure", reason)
            raise optuna.TrialPruned(reason)
        multi = len(self.space.objectives) > 1
        accs, timings = [], {}
        try:
            for ti, task in enumerate(self.tasks):
                acc = self._train_task(trial, task, recipe, seed, ti, report=not multi)
                accs.append(acc)
                timings[task.name] = round(time.perf_counter() - t0 - sum(timings.values()), 3)
        except optuna.TrialPruned:
            trial.set_user_attr("timings", timings)
            raise
        except torch.OutOfMemoryError as e:
            self._fail(trial, f"out of memory: {str(e).splitlines()[0]}")
        except (TrialFailure, HybridSearchError) as e:
            self._fail(trial, str(e))
        except Exception as e:  # a broken trial fails that trial, never the study
            self._fail(trial, f"{type(e).__name__}: {e}")
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        score = sum(accs) / len(accs)
        trial.set_user_attr("task_accuracy", dict(zip([t.name for t in self.tasks], accs)))
        trial.set_user_attr("timings", {**timings, "total": round(time.perf_counter() - t0, 3)})
        return (score, float(counts["trainable"])) if multi else score

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        trial.set_user_attr("failure", reason)
        raise TrialFailure(reason)

    def _train_task(self, trial, task: TaskData, recipe: Recipe, seed: int, ti: int, report: bool) -> float:
        torch.manual_seed(seed)
        model = create_model(self.space.model.name, num_classes=task.num_classes,
                             checkpoint=self.space.model.checkpoint).to(self.device)
        sampled_peft = trial.user_attrs["peft"]
        apply_peft(model, sampled_peft)
        trial.set_user_attr(f"counts.{task.name}", count_parameters(model)["trainable"])

        def on_epoch(epoch: int, acc: float) -> None:
            if not report:
                return
            step = ti * recipe.epochs + epoch
            trial.report(acc, step)
            if trial.should_prune():
                trial.set_user_attr("pruned_at", {"task": task.name, "epoch": epoch, "accuracy": acc})
                raise optuna.TrialPruned(f"pruned at task {task.name} epoch {epoch}")

        res = train_classifier(model, task.train, task.val, recipe, seed=seed, on_epoch=on_epoch)
        return res.val_acc
