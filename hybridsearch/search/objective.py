"""One search trial: sample a hybrid, check its exact size against the budget, train it on every search task at
the space's fidelity through the task family, score it on the validation split (never test), report each epoch
to the pruner. A broken trial fails that trial, never the study: every failure is recorded with its reason."""

from __future__ import annotations

import gc
import math
import time
import traceback
from typing import Any

import optuna
import torch

from ..errors import HybridSearchError, TrialFailure
from ..peft import count_parameters
from ..tasks import TaskData
from ..training.recipe import Recipe
from .space import SearchSpace, check_budget
from .storage import StorageFault, is_storage_fault
from .study import owner


def _release(e: BaseException) -> BaseException:
    """Drop the locals of the finished frames ``e`` went through (the trial's model, its batches): the
    exception outlives the trial (Optuna keeps and logs it), and its memory must not."""
    traceback.clear_frames(e.__traceback__)
    return e


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

    def __init__(self, space: SearchSpace, tasks: list[TaskData], device: str = "cpu", seed: int = 0,
                 data: str | None = None) -> None:
        self.space, self.tasks, self.device, self.seed, self.data = space, tasks, device, seed, data
        # the budget counts the model that trains: its head has the classes of the data, not of the task table
        classes = max((t.num_classes for t in tasks), default=0) if space.family.has_head else 0
        self.num_classes = classes or None

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        t0 = time.perf_counter()
        trial.set_user_attr("worker", owner())
        sampled = self.space.sample(trial)
        seed = trial_seed(trial, self.seed)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("peft", sampled.peft.to_dict())
        trial.set_user_attr("recipe", dict(sampled.recipe))
        recipe = Recipe.from_dict(sampled.recipe)
        recipe.epochs = int(self.space.fidelity.epochs)
        trial.set_user_attr("fidelity", {"epochs": recipe.epochs, "tasks": [t.name for t in self.tasks],
                                         "train_examples": [t.train_examples for t in self.tasks]})
        if self.data is not None:
            trial.set_user_attr("data", self.data)
        # exact counts, before any training
        within, counts = check_budget(self.space, sampled.peft, num_classes=self.num_classes)
        trial.set_user_attr("counts", counts)
        trial.set_user_attr("trainable", counts["trainable"])
        if not within:
            b = self.space.budget
            reason = f"over budget: {counts['budgeted']:,} trainable vs [{b.min_trainable}, {b.max_trainable}]"
            trial.set_user_attr("failure", reason)
            raise optuna.TrialPruned(reason)
        multi = len(self.space.objectives) > 1
        # a baseline is the reference the winner must beat, a final re-training measures a finalist's noise: they
        # report to the pruner but always finish
        prune = not ({"baseline", "final_of"} & set(trial.user_attrs))
        accs, timings = [], {}
        try:
            for ti, task in enumerate(self.tasks):
                accs.append(self._train_task(trial, task, recipe, seed, ti, report=not multi, prune=prune))
                timings[task.name] = round(time.perf_counter() - t0 - sum(timings.values()), 3)
        except optuna.TrialPruned as e:
            _release(e)
            trial.set_user_attr("timings", timings)
            raise
        except Exception as e:
            _release(e)
            if is_storage_fault(e) or isinstance(e, StorageFault):
                raise  # not the trial's failure: the run stops, the trial runs again on resume
            if isinstance(e, torch.OutOfMemoryError):
                self._fail(trial, f"out of memory: {str(e).splitlines()[0]}")
            # a broken trial fails that trial, never the study (TrialFailure and other HybridSearchErrors say why)
            self._fail(trial, str(e) if isinstance(e, HybridSearchError) else f"{type(e).__name__}: {e}")
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

    def _train_task(self, trial: optuna.Trial, task: TaskData, recipe: Recipe, seed: int, ti: int, report: bool,
                    prune: bool = True) -> float:
        torch.manual_seed(seed)
        family = self.space.family
        model = family.build_model(self.space, task, trial.user_attrs["peft"], self.device)
        trial.set_user_attr(f"counts.{task.name}", count_parameters(model)["trainable"])

        def on_epoch(epoch: int, acc: float) -> None:
            if not report:
                return
            trial.report(acc, ti * recipe.epochs + epoch)
            # asked even for a baseline: successive halving records a trial's rung values only when asked
            if trial.should_prune() and prune:
                trial.set_user_attr("pruned_at", {"task": task.name, "epoch": epoch, "accuracy": acc})
                raise optuna.TrialPruned(f"pruned at task {task.name} epoch {epoch}")

        return family.train(self.space, model, task, recipe, seed, on_epoch)


def objective_value(value: Any) -> float:
    """The accuracy of an objective's return value (one or two objectives)."""
    return float(value[0] if isinstance(value, tuple) else value)
