"""Reading a study back: leaderboard rows, the ranking over seeds, the best trial, the Pareto front, the winner
against the best trial of each single method (data only: the commands print it).

A space with ``final`` re-trains its top configurations with other seeds (trials with ``final_of``: the trial
they repeat). Those trials are folded into the trial they repeat: its ``seeds`` are its own score and theirs,
and configurations with several seeds rank first, by their mean, so one lucky seed cannot win.
"""

from __future__ import annotations

import statistics
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .space.schema import base_name

ARM = ".single."  # the single-method arm of study S tunes method M in study S.single.M


def is_final(t: FrozenTrial) -> bool:
    """A re-training of ``final`` (it repeats trial ``final_of`` with another seed)."""
    return "final_of" in t.user_attrs


def seed_scores(study: optuna.Study) -> dict[int, list[float]]:
    """Each completed search trial's accuracy over seeds: its own, then its completed final re-trainings'."""
    trials = study.get_trials(deepcopy=False)
    out = {t.number: [t.values[0]] for t in trials if t.state == TrialState.COMPLETE and not is_final(t)}
    for t in sorted(trials, key=lambda t: t.number):
        if is_final(t) and t.state == TrialState.COMPLETE and t.user_attrs["final_of"] in out:
            out[t.user_attrs["final_of"]].append(t.values[0])
    return out


def mean_std(xs: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (None for one value)."""
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def _rank_key(scores: list[float]) -> tuple[bool, float]:
    return len(scores) > 1, statistics.fmean(scores)


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed search trials, best first: those with several seeds first, by their mean accuracy, then the
    others by their one score (a config's re-trainings are the evidence the others lack)."""
    scores = seed_scores(study)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    return [by_number[n] for n in sorted(scores, key=lambda n: _rank_key(scores[n]), reverse=True)]


def trial_row(t: FrozenTrial, seeds: list[float] | None = None) -> dict[str, Any]:
    peft = (t.user_attrs.get("peft") or {}).get("methods", {})
    values = t.values or []
    seeds = seeds if seeds is not None else ([values[0]] if values else [])
    mean, std = mean_std(seeds) if seeds else (None, None)
    return {
        "number": t.number,
        "state": t.state.name,
        "score": values[0] if values else None,
        "mean": mean,
        "std": std,
        "seeds": seeds,
        "trainable": t.user_attrs.get("trainable"),
        "methods": list(peft),
        "seconds": round(t.duration.total_seconds(), 2) if t.duration else None,
        "failure": t.user_attrs.get("failure"),
        "retry_of": t.user_attrs.get("retry_of"),
        "baseline": t.user_attrs.get("baseline"),
        "final_of": t.user_attrs.get("final_of"),
        "task_accuracy": t.user_attrs.get("task_accuracy"),
    }


def leaderboard(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial: completed search trials in ``ranked_trials`` order (with their seeds), then pruned / failed /
    running ones and the final re-trainings by number."""
    scores = seed_scores(study)
    done = [trial_row(t, scores[t.number]) for t in ranked_trials(study)]
    rest = [trial_row(t) for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
            if t.number not in scores]
    return done + rest


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (one objective: ``ranked_trials``' first) or the Pareto front (two), final re-trainings
    left out."""
    if len(study.directions) > 1:
        front = [t for t in study.best_trials if not is_final(t)]
        return sorted(front, key=lambda t: -t.values[0])
    ranked = ranked_trials(study)
    return ranked[:1]


def arm_studies(study: optuna.Study) -> dict[str, optuna.Study]:
    """The single-method arm of ``study`` (space ``single_arm``) in its storage: method -> its study."""
    prefix = study.study_name + ARM
    names = optuna.study.get_all_study_names(study._storage)
    return {n[len(prefix):]: optuna.load_study(study_name=n, storage=study._storage)
            for n in sorted(names) if n.startswith(prefix)}


def _always_on(study: optuna.Study) -> list[str]:
    methods = (study.user_attrs.get("space") or {}).get("methods", {})
    return [n for n, m in methods.items() if not m.get("optional", True)]


def _entry(t: FrozenTrial, scores: list[float], source: str) -> dict[str, Any]:
    mean, std = mean_std(scores)
    return {"trial": t.number, "score": mean, "std": std, "seeds": len(scores), "source": source,
            "methods": trial_row(t)["methods"], "baseline": t.user_attrs.get("baseline") is not None}


def single_methods(study: optuna.Study, arms: dict[str, optuna.Study] | None = None) -> dict[str, dict[str, Any]]:
    """The best trial of each single method (with the always-on methods) over the whole study, and over its arm
    study when ``arms`` has one (``source``: the study it comes from). No optional method on: ``head_only``, or
    the always-on methods' names (``a+b``, space.schema.base_name) where the space has some."""
    always = _always_on(study)
    base = base_name(always)
    out: dict[str, dict[str, Any]] = {}
    sources = [(study.study_name, study)] + [(s.study_name, s) for s in (arms or {}).values()]
    for name, s in sources:
        scores = seed_scores(s)
        for t in ranked_trials(s):
            extra = [m for m in trial_row(t)["methods"] if m not in always]
            key = base if not extra else extra[0] if len(extra) == 1 else None
            e = _entry(t, scores[t.number], name)
            if key is not None and (key not in out or _rank_key(scores[t.number]) > _key(out[key])):
                out[key] = e
    return out


def _key(e: dict[str, Any]) -> tuple[bool, float]:
    return e["seeds"] > 1, e["score"]


def baseline_comparison(study: optuna.Study, arms: dict[str, optuna.Study] | None = None) -> dict[str, Any] | None:
    """The winner (``best_trials``) against the best trial of each single method over the whole study (and its
    arm studies): None with two objectives or without a completed single-method trial. Scores are means over
    seeds where there are several. With always-on methods, they alone (every optional method off) are one of the
    single methods: the search must beat what it would train without adding anything."""
    singles = single_methods(study, arms)
    methods = {k: v for k, v in singles.items() if k != "head_only"}
    best = best_trials(study)
    if not methods or not best or len(study.directions) > 1:
        return None
    name = max(methods, key=lambda k: _key(methods[k]))
    b, w = methods[name], best[0]
    wmean, wstd = mean_std(seed_scores(study)[w.number])
    head = singles.get("head_only")
    return {"best_single_method": name, "baseline_methods": b["methods"], "single_score": b["score"],
            "single_std": b["std"], "single_seeds": b["seeds"], "single_trial": b["trial"],
            "single_source": b["source"], "single_from_arm": b["source"] != study.study_name,
            "winner_score": wmean, "winner_std": wstd,
            "winner_seeds": len(seed_scores(study)[w.number]), "winner_trial": w.number,
            "winner_methods": trial_row(w)["methods"], "gain": wmean - b["score"],
            "head_only_score": head["score"] if head else None, "per_method": methods,
            "tuned_arm": sorted(arms) if arms else []}


def summary(study: optuna.Study, arms: dict[str, optuna.Study] | None = None) -> dict[str, Any]:
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    best = best_trials(study)
    scores = seed_scores(study)
    return {
        "study": study.study_name,
        "target_trials": study.user_attrs.get("target_trials"),
        "states": states,
        "best": trial_row(best[0], scores.get(best[0].number)) if best else None,
        "pareto_front": [trial_row(t, scores.get(t.number)) for t in best] if len(study.directions) > 1 else None,
        "baselines": baseline_comparison(study, arms),
    }
