"""A study as PNG plots plus ``report.md``: optimisation history, parameter importances, the Pareto front
(two objectives) and accuracy against trainable parameters.

Figures are drawn with matplotlib's object API (``Figure`` + Agg canvas), never ``pyplot``: no global state,
no display needed, and whatever backend the caller set up is left alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .results import best_trials, summary, trial_row

# fANOVA on fewer completed trials returns numbers (even 0.5 / 0.5 on one trial) that mean nothing
MIN_IMPORTANCE_TRIALS = 4
FILES = {
    "history": "history.png",
    "importance": "importance.png",
    "pareto": "pareto.png",
    "accuracy_vs_params": "accuracy_vs_params.png",
}


def _figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def plot_history(study: optuna.Study, path: Path) -> str | None:
    """Validation accuracy per trial, best so far as a step line, pruned trials at their last report."""
    done = _complete(study)
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if t.intermediate_values]
    if not done and not pruned:
        return "history: no completed or reported trial yet"
    fig, ax = _figure()
    if pruned:
        ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                   marker="x", color="0.6", label="pruned (last report)")
    if done:
        xs = [t.number for t in done]
        ys = [t.values[0] for t in done]
        ax.scatter(xs, ys, color="C0", label="complete")
        best = [max(ys[: i + 1]) for i in range(len(ys))]
        ax.step(xs, best, where="post", color="C3", label="best so far")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel="mean validation accuracy", title=f"{study.study_name}: optimisation history")
    ax.legend(loc="best")
    _save(fig, path)
    return None


def importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """(parameter importances of the accuracy objective, or {} with the reason why not)."""
    done = _complete(study)
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return {}, (f"importance: {len(done)} completed trial(s); at least {MIN_IMPORTANCE_TRIALS} are needed "
                    "for meaningful parameter importances")
    if len({t.values[0] for t in done}) < 2:
        return {}, "importance: every completed trial has the same accuracy; nothing to attribute"
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator, target=lambda t: t.values[0])
    except (ValueError, RuntimeError) as e:
        return {}, f"importance: not computable ({e})"
    if not imp:
        return {}, "importance: no parameter varies across the completed trials"
    return dict(imp), None


def plot_importance(imp: dict[str, float], study_name: str, path: Path) -> None:
    names = list(imp)[::-1]  # most important on top
    fig, ax = _figure(6.4, max(2.0, 0.3 * len(names) + 1.0))
    ax.barh(names, [imp[n] for n in names], color="C0")
    ax.set(xlabel="importance (fANOVA, accuracy)", title=f"{study_name}: parameter importances")
    _save(fig, path)


def _trainable(t: FrozenTrial) -> float | None:
    n = t.user_attrs.get("trainable")
    return float(n) if isinstance(n, (int, float)) and n > 0 else None


def _log_x(ax, xs: list[float]) -> None:
    if xs and max(xs) / min(xs) > 10:
        ax.set_xscale("log")


def plot_pareto(study: optuna.Study, path: Path) -> None:
    """Accuracy vs trainable parameters with the Pareto front as a step line (two-objective studies)."""
    done = _complete(study)
    front = sorted(best_trials(study), key=lambda t: t.values[1])
    fig, ax = _figure()
    ax.scatter([t.values[1] for t in done], [t.values[0] for t in done], color="0.6", label="complete")
    ax.step([t.values[1] for t in front], [t.values[0] for t in front], where="post", color="C3",
            marker="o", label="Pareto front")
    for t in front:
        ax.annotate(f"#{t.number}", (t.values[1], t.values[0]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    _log_x(ax, [t.values[1] for t in done])
    ax.set(xlabel="trainable parameters (objective 2, minimised)", ylabel="mean validation accuracy",
           title=f"{study.study_name}: Pareto front")
    ax.legend(loc="best")
    _save(fig, path)


def plot_accuracy_vs_params(study: optuna.Study, path: Path) -> str | None:
    """Every completed trial: accuracy against its exact trainable-parameter count (user attr ``trainable``)."""
    pts = [(n, t.values[0], t.number) for t in _complete(study) if (n := _trainable(t)) is not None]
    if not pts:
        return "accuracy_vs_params: no completed trial with a trainable-parameter count"
    fig, ax = _figure()
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="C0")
    best = max(pts, key=lambda p: p[1])
    ax.annotate(f"best #{best[2]}", (best[0], best[1]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    _log_x(ax, [p[0] for p in pts])
    ax.set(xlabel="trainable parameters", ylabel="mean validation accuracy",
           title=f"{study.study_name}: accuracy vs trainable parameters")
    _save(fig, path)
    return None


def make_report(study: optuna.Study, out: Path) -> dict[str, Any]:
    """Write the plots and ``report.md`` into ``out``; returns {files, notes, summary, importances}."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    notes: list[str] = []

    def done(key: str, note: str | None) -> None:
        if note:
            notes.append(note)
        else:
            files[key] = FILES[key]

    done("history", plot_history(study, out / FILES["history"]))
    imp, note = importances(study)
    if imp:
        plot_importance(imp, study.study_name, out / FILES["importance"])
    done("importance", note)
    if len(study.directions) > 1:
        if _complete(study):
            plot_pareto(study, out / FILES["pareto"])
            files["pareto"] = FILES["pareto"]
        else:
            notes.append("pareto: no completed trial yet")
    done("accuracy_vs_params", plot_accuracy_vs_params(study, out / FILES["accuracy_vs_params"]))
    result = {"study": study.study_name, "out": str(out), "files": files, "notes": notes,
              "summary": summary(study), "importances": imp}
    (out / "report.md").write_text(_markdown(study, result))
    result["files"]["report"] = "report.md"
    return result


_CAPTIONS = {
    "history": "optimisation history: accuracy per trial, best so far, pruned trials at their last report",
    "importance": "parameter importances (fANOVA) for the accuracy objective",
    "pareto": "Pareto front: accuracy vs trainable parameters",
    "accuracy_vs_params": "accuracy vs trainable parameters, every completed trial",
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _markdown(study: optuna.Study, r: dict[str, Any]) -> str:
    s = r["summary"]
    states = ", ".join(f"{k.lower()} {v}" for k, v in s["states"].items()) or "no trials"
    lines = [f"# Study `{study.study_name}`", "",
             f"- trials: {states} (target {s['target_trials']})",
             f"- space: `{study.user_attrs.get('space_ref')}` (hash `{str(study.user_attrs.get('space_hash'))[:12]}`)",
             f"- objectives: {', '.join(d.name.lower() for d in study.directions)}", ""]
    lines += _best_section(study)
    if s["pareto_front"]:
        lines += ["## Pareto front", "", "| trial | accuracy | trainable | methods |", "|---|---|---|---|"]
        lines += [f"| #{p['number']} | {_fmt(p['score'])} | {p['trainable']:,} | {', '.join(p['methods'])} |"
                  for p in s["pareto_front"]]
        lines.append("")
    lines += ["## Files", ""]
    lines += [f"- [{name}]({name}): {_CAPTIONS[key]}" for key, name in r["files"].items()] or ["- none"]
    if r["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


def _best_section(study: optuna.Study) -> list[str]:
    best = best_trials(study)
    if not best:
        return ["## Best trial", "", "No completed trial yet.", ""]
    t = best[0]
    row = trial_row(t)
    trainable = f"{row['trainable']:,}" if row["trainable"] is not None else "?"
    lines = ["## Best trial", "", f"Trial #{t.number}: mean validation accuracy {_fmt(row['score'])}, "
             f"{trainable} trainable parameters, methods {', '.join(row['methods']) or 'none'}.", "",
             "| parameter | value |", "|---|---|"]
    lines += [f"| `{k}` | {_fmt(v)} |" for k, v in t.params.items()]
    return lines + [""]
