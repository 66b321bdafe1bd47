"""Export a study's winner: ``peft.yaml`` + ``meta.json``; with ``retrain``, train it at full fidelity on
train800val200, evaluate test once, and save the adapters (and the merged model where merging is exact)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from ..errors import ConfigError
from ..peft import PeftConfig
from .results import best_trials


def versions() -> dict[str, str]:
    from .. import __version__

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


def export(study: optuna.Study, out: Path, trial_number: int | None = None, retrain: bool = False,
           data_root: str | None = None, log=print) -> dict[str, Any]:
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
        "versions": versions(), "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if retrain:
        meta["retrain"] = _retrain(study, trial, cfg, out, data_root or study.user_attrs.get("data_root"), log)
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return meta


def _retrain(study, trial, cfg: PeftConfig, out: Path, data_root: str | None, log) -> dict[str, Any]:
    """Full-fidelity training on train800val200 per task, one test evaluation, adapters + merged model."""
    from ..models import create_model
    from ..models.checkpoint import save_mamba, save_vim
    from ..peft import apply_peft, merge_peft, save_adapters
    from ..train import Recipe, evaluate, train_classifier
    from .objective import _img_size, build_lm, load_tasks, train_lm_task
    from .objective import data_root as resolve_root
    from .space import load_space

    space = load_space(study.user_attrs["space_ref"])
    root = resolve_root(space, data_root)
    recipe = Recipe.from_dict(trial.user_attrs.get("recipe"))
    tasks = load_tasks(space, root, _img_size(space), None, train_split="train800val200", val_split="test")
    seed = int(trial.user_attrs.get("seed") or 0)
    results = {}
    lm = space.data.kind == "commonsense"
    for task in tasks:
        log(f"retraining trial {trial.number} on {task.name} (all training data, {recipe.epochs} epochs)")
        torch.manual_seed(seed)
        if lm:
            model, tokenizer = build_lm(space, cfg.to_dict())
            acc = train_lm_task(model, tokenizer, task, recipe, seed)  # test.json, scored once
        else:
            model = create_model(space.model.name, num_classes=task.num_classes, checkpoint=space.model.checkpoint)
            apply_peft(model, cfg)
            train_classifier(model, task.train, None, recipe, seed=seed)
            acc = evaluate(model, *task.val)  # test split, evaluated once
        adir = save_adapters(model, out / "adapters" / task.name,
                             extra_meta={"model": space.model.name, "task": task.name, "test_accuracy": acc})
        entry: dict[str, Any] = {"test_accuracy": acc, "adapters": str(adir)}
        try:
            merged = merge_peft(model)
            if merged.kind == "vim":
                entry["merged"] = str(save_vim(merged, out / "merged" / f"{task.name}.pth"))
            else:
                entry["merged"] = str(save_mamba(merged, out / "merged" / task.name))
        except ConfigError as e:
            entry["merged"] = None
            entry["merge_note"] = str(e)
        results[task.name] = entry
        log(f"  {task.name}: test accuracy {acc:.4f}")
    return results
