"""The leaderboard table that ``run``, ``resume`` and ``show`` print."""

from __future__ import annotations

from typing import Any

import optuna

from ..display import console as make_console
from ..display import printable
from ..search.results import arm_studies, leaderboard, summary


def score_text(mean: float | None, std: float | None, seeds: int) -> str:
    """``0.6900``, or ``0.6900 ± 0.0040 (3)`` for a mean over seeds."""
    if mean is None:
        return ""
    return f"{mean:.4f}" if seeds <= 1 or std is None else f"{mean:.4f} ± {std:.4f} ({seeds})"


def render(study: optuna.Study, limit: int = 20, stderr: bool = False) -> None:
    from rich.table import Table
    from rich.text import Text

    rows = leaderboard(study)
    s = summary(study, arm_studies(study))
    title = f"study {study.study_name}: " + ", ".join(f"{k.lower()} {v}" for k, v in s["states"].items())
    t = Table(title=title)
    for c, j in (("#", "right"), ("state", "left"), ("val acc", "right"), ("trainable", "right"),
                 ("methods", "left"), ("s", "right"), ("note", "left")):
        t.add_column(c, justify=j)
    for r in rows[:limit]:
        note = r["failure"] or (f"retry of #{r['retry_of']}" if r["retry_of"] is not None else "")
        if r["final_of"] is not None:
            note = f"final re-training of #{r['final_of']}" + (f"; {note}" if note else "")
        if r["baseline"]:
            note = f"baseline {r['baseline']}" + (f"; {note}" if note else "")
        score = score_text(r["mean"], r["std"], len(r["seeds"])) if r["final_of"] is None else \
            score_text(r["score"], None, 1)
        t.add_row(str(r["number"]), r["state"], score,
                  "" if r["trainable"] is None else f"{r['trainable']:,}", ", ".join(r["methods"]),
                  "" if r["seconds"] is None else f"{r['seconds']:.1f}", Text(printable(note or "")[:60]))
    console = make_console(stderr)
    console.print(t)
    if b := s["baselines"]:
        console.print(comparison_line(b), soft_wrap=True)
        console.print("best trial of each single method: " + ", ".join(
            f"{m} #{e['trial']}{' (arm)' if e['source'] != study.study_name else ''} "
            f"{score_text(e['score'], e['std'], e['seeds'])}"
            for m, e in sorted(b["per_method"].items(), key=lambda kv: -kv[1]["score"])), soft_wrap=True)
    if s["pareto_front"]:
        console.print("Pareto front (accuracy vs trainable parameters): "
                      + ", ".join(f"#{r['number']} {r['score']:.4f}/{r['trainable']:,}" for r in s["pareto_front"]))


def comparison_line(b: dict[str, Any]) -> str:
    """``winner #N ACC vs best single method M (#K) ACC: +GAIN; head only ACC`` (means over seeds where there
    are several; ``tuned`` when the best single method comes from the single-method arm)."""
    what = (f"best single method {b['best_single_method']}" if len(b["baseline_methods"]) <= 1
            else f"best baseline {' + '.join(b['baseline_methods'])}")
    where = f"{b['single_source']} #{b['single_trial']}" if b["single_from_arm"] else f"#{b['single_trial']}"
    return (f"winner #{b['winner_trial']} {score_text(b['winner_score'], b['winner_std'], b['winner_seeds'])} "
            f"vs {what} ({where}) {score_text(b['single_score'], b['single_std'], b['single_seeds'])}: "
            f"{b['gain']:+.4f}" + (f"; head only {b['head_only_score']:.4f}" if b["head_only_score"] is not None
                                   else ""))
