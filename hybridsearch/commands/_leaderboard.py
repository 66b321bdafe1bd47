"""The leaderboard table that ``run``, ``resume`` and ``show`` print."""

from __future__ import annotations

import optuna

from ..display import console as make_console
from ..display import printable
from ..search.results import leaderboard, summary


def render(study: optuna.Study, limit: int = 20, stderr: bool = False) -> None:
    from rich.table import Table
    from rich.text import Text

    rows = leaderboard(study)
    s = summary(study)
    title = f"study {study.study_name}: " + ", ".join(f"{k.lower()} {v}" for k, v in s["states"].items())
    t = Table(title=title)
    for c, j in (("#", "right"), ("state", "left"), ("val acc", "right"), ("trainable", "right"),
                 ("methods", "left"), ("s", "right"), ("note", "left")):
        t.add_column(c, justify=j)
    for r in rows[:limit]:
        note = r["failure"] or (f"retry of #{r['retry_of']}" if r["retry_of"] is not None else "")
        if r["baseline"]:
            note = f"baseline {r['baseline']}" + (f"; {note}" if note else "")
        t.add_row(str(r["number"]), r["state"], "" if r["score"] is None else f"{r['score']:.4f}",
                  "" if r["trainable"] is None else f"{r['trainable']:,}", ", ".join(r["methods"]),
                  "" if r["seconds"] is None else f"{r['seconds']:.1f}", Text(printable(note or "")[:60]))
    console = make_console(stderr)
    console.print(t)
    if b := s["baselines"]:
        what = (f"best single method {b['best_single_method']}" if len(b["baseline_methods"]) <= 1
                else f"best baseline {' + '.join(b['baseline_methods'])}")
        console.print(f"winner #{b['winner_trial']} {b['winner_score']:.4f} vs {what} "
                      f"(#{b['single_trial']}) {b['single_score']:.4f}: "
                      f"{b['gain']:+.4f}" + (f"; head only {b['head_only_score']:.4f}"
                                             if b["head_only_score"] is not None else ""), soft_wrap=True)
    if s["pareto_front"]:
        console.print("Pareto front (accuracy vs trainable parameters): "
                      + ", ".join(f"#{r['number']} {r['score']:.4f}/{r['trainable']:,}" for r in s["pareto_front"]))
