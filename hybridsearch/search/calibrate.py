"""Can the cheap proxy be trusted? Sample K configurations of a space, train each at the space's (proxy)
fidelity and at full fidelity (more epochs, every task, all examples), and report the rank correlation
(Spearman, Kendall) between the two scores. A search only needs the proxy to *rank* configurations like full
training does; the absolute accuracies may differ.

No Optuna storage: configurations come from an in-memory study with a seeded random sampler, and each one is
trained through the search's own ``Objective`` with a ``FixedTrial`` (same sampling, counting and training).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna

from ..errors import ConfigError, HybridSearchError
from .objective import Objective
from .space import Budget, Fidelity, SearchSpace, check_budget

FULL_EPOCHS_FACTOR = 3  # default full fidelity: 3x the proxy's epochs
_MAX_DRAWS_PER_CONFIG = 50  # over-budget draws are skipped (the search prunes them), up to this many tries
# Spearman thresholds of the verdict: a rule of thumb, not a statistical test
TRUST, CAREFUL = 0.8, 0.5


@dataclass
class Row:
    index: int
    params: dict[str, Any]
    methods: list[str]
    trainable: int
    proxy: float | None = None
    full: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    failure: str | None = None


# -- rank correlation ---------------------------------------------------------------------------------------
def _ranks(x: list[float]) -> list[float]:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va, vb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else math.nan


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho: Pearson correlation of average ranks (what scipy.stats.spearmanr computes)."""
    return _pearson(_ranks(x), _ranks(y))


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (tie-corrected; scipy.stats.kendalltau's default), O(n^2): K is small."""
    conc = disc = tx = ty = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom > 0 else math.nan


def rank_correlations(x: list[float], y: list[float]) -> dict[str, float | None]:
    """Spearman and Kendall (with p-values when scipy is installed); None where undefined (n < 3, constant)."""
    out: dict[str, float | None] = {"spearman": None, "spearman_p": None, "kendall": None, "kendall_p": None}
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return out
    try:
        from scipy import stats
    except ImportError:
        stats = None
    if stats is not None:
        rho, tau = stats.spearmanr(x, y), stats.kendalltau(x, y)
        vals = (rho.statistic, rho.pvalue, tau.statistic, tau.pvalue)
    else:
        vals = (spearman(x, y), None, kendall_tau_b(x, y), None)
    for k, v in zip(out, vals):
        out[k] = None if v is None or not math.isfinite(float(v)) else round(float(v), 4)
    return out


# -- sampling and training ---------------------------------------------------------------------------------
def sample_configs(space: SearchSpace, k: int, seed: int) -> list[Row]:
    """``k`` distinct in-budget configurations drawn by a seeded random sampler."""
    sampler = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(directions=space.directions, sampler=sampler)
    rows: list[Row] = []
    seen: set[str] = set()
    for _ in range(k * _MAX_DRAWS_PER_CONFIG):
        if len(rows) == k:
            break
        trial = study.ask()
        cfg = space.sample(trial)
        within, counts = check_budget(space, cfg.peft)
        key = repr(sorted(cfg.params.items()))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        if within and key not in seen:
            seen.add(key)
            rows.append(Row(len(rows), dict(cfg.params), list(cfg.peft.to_dict()["methods"]), counts["trainable"]))
    if len(rows) < k:
        raise ConfigError(f"{space.source}: found only {len(rows)} distinct in-budget configurations of {k} "
                          f"after {k * _MAX_DRAWS_PER_CONFIG} draws; ask for fewer --configs")
    return rows


def at_fidelity(space: SearchSpace, fid: Fidelity) -> SearchSpace:
    """The space trained at ``fid``; no budget (configurations were checked against it when sampled)."""
    return replace(space, fidelity=fid, budget=Budget(), stages=())


def fidelity_dict(fid: Fidelity) -> dict[str, Any]:
    return {"epochs": fid.epochs, "tasks": list(fid.tasks), "max_train_examples": fid.max_train_examples,
            "max_val_examples": fid.max_val_examples}


def score(space: SearchSpace, tasks: list, params: dict[str, Any], device: str, seed: int) -> float:
    """Mean validation accuracy of one configuration, trained by the search's ``Objective``."""
    value = Objective(space, tasks, device, seed=seed)(optuna.trial.FixedTrial(dict(params)))
    return float(value[0] if isinstance(value, tuple) else value)


def _load(space: SearchSpace, root: Path, fid: Fidelity) -> list:
    return space.family.load_tasks(space, root, tasks=list(fid.tasks), max_train=fid.max_train_examples,
                                   max_val=fid.max_val_examples)


def _train_all(space: SearchSpace, fid: Fidelity, rows: list[Row], root: Path, key: str, device: str,
               seed: int, log: Callable[[str], None]) -> None:
    tasks = _load(space, root, fid)
    fspace = at_fidelity(space, fid)
    for r in rows:
        if r.failure:
            continue
        t0 = time.perf_counter()
        try:
            setattr(r, key, score(fspace, tasks, r.params, device, seed))
        except (HybridSearchError, optuna.TrialPruned) as e:  # one broken config must not end the calibration
            r.failure = f"{key}: {e}"
        r.seconds[key] = round(time.perf_counter() - t0, 2)
        value = getattr(r, key)
        log(f"config {r.index} ({', '.join(r.methods)}): {key} "
            f"{'failed' if value is None else f'{value:.4f}'} in {r.seconds[key]:.1f} s")


# -- the calibration ----------------------------------------------------------------------------------------
def calibrate(space: SearchSpace, configs: int, *, proxy_epochs: int | None = None, full_epochs: int | None = None,
              full_train_examples: int | None = None, seed: int = 0, data_root: str | None = None,
              device: str = "cpu", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``configs`` sampled configurations at proxy and full fidelity; rank correlation of the scores."""
    from ..tasks import FAMILIES

    if not space.family.calibrates:
        kinds = [k for _, f in FAMILIES.items() if f.calibrates for k in f.data_kinds]
        raise ConfigError(f"{space.source}: calibrate supports {', '.join(kinds)} spaces only")
    if configs < 3:
        raise ConfigError(f"--configs {configs}: a rank correlation needs at least 3 configurations")
    for name, v in (("--proxy-epochs", proxy_epochs), ("--full-epochs", full_epochs),
                    ("--full-train-examples", full_train_examples)):
        if v is not None and v < 1:
            raise ConfigError(f"{name} {v}: must be at least 1")
    proxy = replace(space.fidelity, epochs=proxy_epochs or space.fidelity.epochs, min_epochs=1,
                    tasks=tuple(space.search_tasks))
    full = Fidelity(full_epochs or FULL_EPOCHS_FACTOR * proxy.epochs, 1, full_train_examples, None,
                    tuple(space.data.tasks))
    root = space.family.data_root(space, data_root)
    t0 = time.perf_counter()
    rows = sample_configs(space, configs, seed)
    for key, fid in (("proxy", proxy), ("full", full)):
        _train_all(space, fid, rows, root, key, device, seed, log)
    return _result(space, rows, proxy, full, seed, time.perf_counter() - t0)


def _result(space: SearchSpace, rows: list[Row], proxy: Fidelity, full: Fidelity, seed: int,
            seconds: float) -> dict[str, Any]:
    ok = [r for r in rows if r.proxy is not None and r.full is not None]
    corr = rank_correlations([r.proxy for r in ok], [r.full for r in ok])
    out: dict[str, Any] = {
        "space": space.name, "configs": len(rows), "scored": len(ok), "seed": seed,
        "proxy": fidelity_dict(proxy), "full": fidelity_dict(full), **corr,
        "top1_agrees": None, "regret": None, "seconds": round(seconds, 1),
        "rows": [{"index": r.index, "methods": r.methods, "trainable": r.trainable, "proxy": r.proxy,
                  "full": r.full, "proxy_rank": None, "full_rank": None, "seconds": r.seconds,
                  "failure": r.failure, "params": r.params} for r in rows],
    }
    if ok:
        by_proxy = max(ok, key=lambda r: r.proxy)
        best_full = max(r.full for r in ok)
        out["top1_agrees"] = by_proxy.full == best_full
        out["regret"] = round(best_full - by_proxy.full, 4)  # full accuracy lost by trusting the proxy's pick
        for key in ("proxy", "full"):
            ranks = _ranks([-getattr(r, key) for r in ok])  # 1 = best
            for r, rank in zip(ok, ranks):
                out["rows"][r.index][f"{key}_rank"] = rank
    out["verdict"] = verdict(out["spearman"], len(ok))
    return out


def verdict(rho: float | None, n: int) -> str:
    if rho is None:
        return "undefined: too few scored configurations or every score equal; use more --configs or epochs"
    small = f" (only {n} configurations: treat as a rough estimate)" if n < 8 else ""
    if rho >= TRUST:
        return f"trust the proxy: it ranks configurations like full training{small}"
    if rho >= CAREFUL:
        return f"use the proxy with care: raise its fidelity or re-train the top few at full fidelity{small}"
    return f"do not trust the proxy: its ranking disagrees with full training{small}"
