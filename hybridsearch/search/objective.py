"""One search trial: sample a hybrid, check its exact size against the budget, train it on every task's
train split at the space's fidelity, score it on the val split (never test), report to the pruner."""

from __future__ import annotations

import gc
import math
import os
import time
import traceback
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


def _release(e: BaseException) -> BaseException:
    """Drop the locals of the finished frames ``e`` went through (the trial's model, its batches): the
    exception outlives the trial (Optuna keeps and logs it), and its memory must not."""
    traceback.clear_frames(e.__traceback__)
    return e


def data_root(space, override: str | None) -> Path:
    """Where the space's tasks live; mini-VTAB is built on first use."""
    data = space.data
    if data.kind == "mini_vtab" and not (override or data.root):
        from ..data.mini_vtab import ensure_mini_vtab

        return ensure_mini_vtab()
    if data.kind == "commonsense" and not (override or data.root):
        from ..lm.evaluate import DEFAULT_DATA_ROOT

        return DEFAULT_DATA_ROOT
    root = override or data.root
    if not root or not Path(root).is_dir():
        raise DataError(
            f"{space.source}: data.root {root!r} does not exist; pass --data-root DIR pointing at the VTAB-1k "
            "folder (see README: Quick start, real VTAB-1k), or run the embedded default: "
            "hybridsearch run --space mini_vtab"
        )
    return Path(root)


# which label words belong to which commonsense task family (the "Answer format:" line of each record)
_LABEL_FAMILY = {"true": ("boolq",), "solution1": ("piqa",), "ending1": ("hellaswag",), "option1": ("winogrande",),
                 "answer1": ("social_i_qa", "ARC-Challenge", "ARC-Easy", "openbookqa")}


def _family(record) -> tuple[str, ...]:
    from ..data.commonsense import parse_label_set

    labels = parse_label_set(record.instruction)
    return _LABEL_FAMILY.get(labels[0], ()) if labels else ()


def load_commonsense(space, root: Path, max_train: int | None, max_val: int | None, test: bool = False) -> list:
    """One TaskData for the LM: the mixed training file less a held-out validation part (the objective),
    restricted to the label families of the space's tasks; ``test``: train on all of it, score test.json."""
    from ..data.commonsense import canonical_task, load_records, load_test, split_train_val
    from ..lm.proxy_tasks import TRAIN_FILE

    wanted = {canonical_task(t) for t in space.search_tasks}
    path = root / TRAIN_FILE if (root / TRAIN_FILE).is_file() else root / "commonsense_170k.json"
    records = [r for r in load_records(path) if wanted & set(_family(r))]
    if not records:
        raise DataError(f"{path}: no training record matches the tasks {sorted(wanted)}")
    if test:
        train, val = records, [r for t in sorted(wanted) for r in load_test(root, t)]
    else:
        train, val = split_train_val(records, val_size=min(max_val or 300, len(records) // 5), seed=42)
    train = train[:max_train] if max_train else train
    return [TaskData("+".join(sorted(wanted)), 0, (train, None), (val, None))]


def load_tasks(space, root: Path, image_size: int, max_train: int | None, tasks: list[str] | None = None,
               train_split: str | None = None, val_split: str | None = None,
               max_val: int | None = None) -> list[TaskData]:
    from ..data.vtab import load_split, normalize, num_classes

    if space.data.kind == "commonsense":
        return load_commonsense(space, root, max_train, max_val, test=val_split == "test")

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


def trial_seed(trial: optuna.Trial, base: int) -> int:
    """``base`` + the trial number; a re-queued trial (``retry_of``) keeps the lost trial's seed, so the re-run
    repeats the training the interruption cut short."""
    origin = trial.user_attrs.get("retry_of")
    if origin is None:
        return base + trial.number
    storage, study_id = trial.study._storage, trial.study._study_id
    lost = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, int(origin)))
    return int(lost.user_attrs.get("seed", base + lost.number))


class Objective:
    """Callable for ``study.optimize``; raises ``TrialPruned`` or ``TrialFailure`` to end a trial early."""

    def __init__(self, space, tasks: list[TaskData], device: str = "cpu", seed: int = 0) -> None:
        self.space, self.tasks, self.device, self.seed = space, tasks, device, seed

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        t0 = time.perf_counter()
        trial.set_user_attr("worker", {"host": os.uname().nodename, "pid": os.getpid()})
        sampled = self.space.sample(trial)
        seed = trial_seed(trial, self.seed)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("peft", sampled.peft.to_dict())
        trial.set_user_attr("recipe", dict(sampled.recipe))
        recipe = Recipe.from_dict(sampled.recipe)
        epochs = _fidelity(self.space, "epochs", recipe.epochs)
        recipe.epochs = int(epochs)
        trial.set_user_attr("fidelity", {"epochs": recipe.epochs, "tasks": [t.name for t in self.tasks],
                                         "train_examples": [len(t.train[0]) for t in self.tasks]})
        within, counts = check_budget(self.space, sampled.peft)  # exact counts, before any training
        trial.set_user_attr("counts", counts)
        trial.set_user_attr("trainable", counts["trainable"])
        if not within:
            b = self.space.budget
            reason = f"over budget: {counts['budgeted']:,} trainable vs [{b.min_trainable}, {b.max_trainable}]"
            trial.set_user_attr("failure", reason)
            raise optuna.TrialPruned(reason)
        multi = len(self.space.objectives) > 1
        # a baseline is the reference the winner must beat: it reports to the pruner but always finishes
        prune = "baseline" not in trial.user_attrs
        accs, timings = [], {}
        try:
            for ti, task in enumerate(self.tasks):
                acc = self._train_task(trial, task, recipe, seed, ti, report=not multi, prune=prune)
                accs.append(acc)
                timings[task.name] = round(time.perf_counter() - t0 - sum(timings.values()), 3)
        except optuna.TrialPruned as e:
            _release(e)
            trial.set_user_attr("timings", timings)
            raise
        except torch.OutOfMemoryError as e:
            self._fail(trial, f"out of memory: {str(_release(e)).splitlines()[0]}")
        except (TrialFailure, HybridSearchError) as e:
            self._fail(trial, str(_release(e)))
        except Exception as e:  # a broken trial fails that trial, never the study
            self._fail(trial, f"{type(_release(e)).__name__}: {e}")
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        score = sum(accs) / len(accs)
        if not math.isfinite(score):  # Optuna would fail it silently, without a reason in the leaderboard
            self._fail(trial, f"non-finite validation accuracy ({score})")
        trial.set_user_attr("task_accuracy", dict(zip([t.name for t in self.tasks], accs)))
        trial.set_user_attr("timings", {**timings, "total": round(time.perf_counter() - t0, 3)})
        return (score, float(counts["trainable"])) if multi else score

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        trial.set_user_attr("failure", reason)
        raise TrialFailure(reason)

    def _train_task(self, trial, task: TaskData, recipe: Recipe, seed: int, ti: int, report: bool,
                    prune: bool = True) -> float:
        torch.manual_seed(seed)
        if self.space.data.kind == "commonsense":
            model, tokenizer = build_lm(self.space, trial.user_attrs["peft"], self.device)
        else:
            model = create_model(self.space.model.name, num_classes=task.num_classes,
                                 checkpoint=self.space.model.checkpoint).to(self.device)
            apply_peft(model, trial.user_attrs["peft"])
        trial.set_user_attr(f"counts.{task.name}", count_parameters(model)["trainable"])

        def on_epoch(epoch: int, acc: float) -> None:
            if not report:
                return
            step = ti * recipe.epochs + epoch
            trial.report(acc, step)
            # asked even for a baseline: successive halving records a trial's rung values only when asked
            if trial.should_prune() and prune:
                trial.set_user_attr("pruned_at", {"task": task.name, "epoch": epoch, "accuracy": acc})
                raise optuna.TrialPruned(f"pruned at task {task.name} epoch {epoch}")

        if self.space.data.kind == "commonsense":
            return train_lm_task(model, tokenizer, task, recipe, seed, on_epoch)
        res = train_classifier(model, task.train, task.val, recipe, seed=seed, on_epoch=on_epoch)
        return res.val_acc


def build_lm(space, peft: dict, device: str = "cpu"):
    from ..lm.loading import load_lm

    model, tokenizer = load_lm(space.model.checkpoint or space.model.name, device=device)
    apply_peft(model, peft)
    return model, tokenizer


def train_lm_task(model, tokenizer, task: TaskData, recipe: Recipe, seed: int, on_epoch=None,
                  score: bool = True) -> float:
    """LM fine-tuning with the reference recipe (lm/train.py); the search's recipe sets lr, decay, epochs and
    the effective batch. Returns the likelihood accuracy on ``task.val``."""
    from ..lm.evaluate import likelihood_accuracy
    from ..lm.train import LMRecipe, train_lm

    r = LMRecipe(lr=recipe.lr, weight_decay=recipe.weight_decay, epochs=recipe.epochs,
                 batch_size=recipe.batch_size, micro_batch_size=math.gcd(recipe.batch_size, 16),
                 schedule="linear" if recipe.schedule == "cosine" else recipe.schedule,
                 train_on_inputs=recipe.train_on_inputs)
    val = task.val[0] if on_epoch is not None else None
    res = train_lm(model, tokenizer, task.train[0], r, val=val, seed=seed, on_epoch=on_epoch)
    if val is not None and res.history:
        return res.val_acc
    return likelihood_accuracy(model, tokenizer, task.val[0]) if score else float("nan")
