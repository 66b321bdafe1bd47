"""Export a study's winner: ``peft.yaml`` + ``meta.json``; with ``retrain``, train it at full fidelity on all the
training data of each task (its task family decides what that is), evaluate test once, and save the adapters
(and the merged model where merging is exact)."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from .._version import __version__
from ..errors import ConfigError
from ..peft import PeftConfig, merge_peft, save_adapters
from ..search.results import best_trials, mean_std, seed_scores
from ..search.space import load_space
from ..training.recipe import Recipe
from .bundle import CHECKPOINT_SUFFIX, write_model


def versions() -> dict[str, str]:
    return {"hybridsearch": __version__, "torch": torch.__version__, "optuna": optuna.__version__,
            "python": platform.python_version()}


def pick_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    if number is not None:
        t = study.trials[number] if 0 <= number < len(study.trials) else None
        if t is None or t.state != optuna.trial.TrialState.COMPLETE:
            raise ConfigError(f"trial {number} of study {study.study_name!r} is not a completed trial")
        return t
    best = best_trials(study)
    if not best:
        raise ConfigError(f"study {study.study_name!r} has no completed trial to export yet")
    return best[0]


def export_winner(study: optuna.Study, out: Path, trial_number: int | None = None, retrain: bool = False,
                  data_root: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the best trial (or ``trial_number``) of ``study`` into ``out``; returns what ``meta.json`` holds."""
    trial = pick_trial(study, trial_number)
    cfg = PeftConfig.from_dict(trial.user_attrs["peft"], f"study {study.study_name} trial {trial.number}")
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "peft.yaml")
    meta: dict[str, Any] = {
        "study": study.study_name, "trial": trial.number, "score": trial.values[0], "values": trial.values,
        "seed": trial.user_attrs.get("seed"), "space_hash": study.user_attrs.get("space_hash"),
        "space_ref": study.user_attrs.get("space_ref"), "model": (study.user_attrs.get("space") or {}).get("model"),
        "counts": trial.user_attrs.get("counts"), "recipe": trial.user_attrs.get("recipe"),
        "fidelity": trial.user_attrs.get("fidelity"), "task_accuracy": trial.user_attrs.get("task_accuracy"),
        **_over_seeds(study, trial),
        "versions": versions(), "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if retrain:
        meta["retrain"] = _retrain(study, trial, cfg, out, data_root or study.user_attrs.get("data_root"), log)
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return meta


def _over_seeds(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The trial's scores over seeds (its own, then its ``final`` re-trainings'), their mean and std."""
    scores = seed_scores(study).get(trial.number, [trial.values[0]])
    mean, std = mean_std(scores)
    return {"seed_scores": scores, "mean": mean, "std": std}


def _retrain(study: optuna.Study, trial: optuna.trial.FrozenTrial, cfg: PeftConfig, out: Path,
             data_root: str | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Per task: train on all the training data at full fidelity, test once, save the adapters and the merged
    model (where merging is exact)."""
    space = load_space(study.user_attrs["space_ref"])
    family = space.family
    recipe = Recipe.from_dict(trial.user_attrs.get("recipe"))
    tasks = family.load_tasks(space, family.data_root(space, data_root), final=True)
    seed = int(trial.user_attrs.get("seed") or 0)
    results = {}
    for task in tasks:
        log(f"retraining trial {trial.number} on {task.name} (all training data, {recipe.epochs} epochs)")
        torch.manual_seed(seed)
        model = family.build_model(space, task, cfg.to_dict())
        acc = family.train(space, model, task, recipe, seed)  # the test split, scored once
        adir = save_adapters(model, out / "adapters" / task.name,
                             extra_meta={"model": space.model.name, "task": task.name, "test_accuracy": acc})
        entry: dict[str, Any] = {"test_accuracy": acc, "adapters": str(adir)}
        try:
            merged = merge_peft(model)
            entry["merged"] = str(write_model(merged, out / "merged" / f"{task.name}{CHECKPOINT_SUFFIX[merged.kind]}"))
        except ConfigError as e:
            entry["merged"] = None
            entry["merge_note"] = str(e)
        results[task.name] = entry
        log(f"  {task.name}: test accuracy {acc:.4f}")
    return results
