"""Reading a study back: leaderboard rows, the best trial, the Pareto front, the winner against the baselines
(data only: the commands print it)."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


def trial_row(t: FrozenTrial) -> dict[str, Any]:
    peft = (t.user_attrs.get("peft") or {}).get("methods", {})
    values = t.values or []
    return {
        "number": t.number,
        "state": t.state.name,
        "score": values[0] if values else None,
        "trainable": t.user_attrs.get("trainable"),
        "methods": list(peft),
        "seconds": round(t.duration.total_seconds(), 2) if t.duration else None,
        "failure": t.user_attrs.get("failure"),
        "retry_of": t.user_attrs.get("retry_of"),
        "baseline": t.user_attrs.get("baseline"),
        "task_accuracy": t.user_attrs.get("task_accuracy"),
    }


def leaderboard(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial: completed ones best first, then pruned / failed / running."""
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    done = sorted((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: -r["score"])
    rest = sorted((r for r in rows if r["state"] != "COMPLETE"), key=lambda r: r["number"])
    return done + rest


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (one objective) or the Pareto front (two)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: -t.values[0])
    return [max(complete, key=lambda t: t.values[0])]


def baseline_comparison(study: optuna.Study) -> dict[str, Any] | None:
    """With ``baselines: true``: the best completed single-method baseline vs the best trial (one objective).
    A space with always-on methods has baselines of those plus one optional method: ``baseline_methods``."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    base = [t for t in done if t.user_attrs.get("baseline") not in (None, "head_only")]
    if not base or len(study.directions) > 1:
        return None
    head = [t for t in done if t.user_attrs.get("baseline") == "head_only"]
    b, w = max(base, key=lambda t: t.values[0]), max(done, key=lambda t: t.values[0])
    return {"best_single_method": b.user_attrs["baseline"], "baseline_methods": trial_row(b)["methods"],
            "single_score": b.values[0], "single_trial": b.number,
            "winner_score": w.values[0], "winner_trial": w.number, "winner_methods": trial_row(w)["methods"],
            "gain": w.values[0] - b.values[0], "head_only_score": head[0].values[0] if head else None}


def summary(study: optuna.Study) -> dict[str, Any]:
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    best = best_trials(study)
    return {
        "study": study.study_name,
        "target_trials": study.user_attrs.get("target_trials"),
        "states": states,
        "best": trial_row(best[0]) if best else None,
        "pareto_front": [trial_row(t) for t in best] if len(study.directions) > 1 else None,
        "baselines": baseline_comparison(study),
    }
