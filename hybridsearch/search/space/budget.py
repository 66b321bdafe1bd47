"""Exact sizes and the budget: trainable-parameter counts of a space's configurations on the meta device
(nothing allocated), the per-trial budget check, and ``validate_space``: the checks that need the model (it
resolves, every value of every method applies to it, some configuration can meet the budget)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import HybridSearchError
from ...peft import PeftConfig, count_config
from .checks import Errors
from .params import CategoricalParam, FloatParam, IntParam, Param
from .schema import MethodSpace, SearchSpace, canonical_json, layer_keys, stage1_settings, stage_dict

_COUNTS: dict[tuple, dict] = {}  # (model, classes, methods) -> counts: trials and validation ask for the same


def count_methods(space: SearchSpace, methods: dict[str, dict[str, Any]],
                  num_classes: int | None = None) -> dict[str, Any]:
    """Exact counts (meta device, nothing allocated) of the space's model with ``methods`` attached, plus
    ``budgeted``: what the budget limits (trainable, less the head when ``include_head`` is false). The head
    has ``num_classes`` (the loaded data's), else the space's ``num_classes()``."""
    nc = num_classes or space.num_classes()
    key = (space.model.name, nc, canonical_json(methods))
    if key not in _COUNTS:
        if len(_COUNTS) > 4096:
            _COUNTS.clear()
        _COUNTS[key] = count_config(space.model.name, {"methods": copy.deepcopy(methods)}, nc)
    counts = {**_COUNTS[key], "by_method": dict(_COUNTS[key]["by_method"])}
    counts["budgeted"] = counts["trainable"] - (0 if space.budget.include_head else counts["head"])
    return counts


def check_budget(space: SearchSpace, peft_config: PeftConfig | dict,
                 num_classes: int | None = None) -> tuple[bool, dict[str, Any]]:
    """(within budget, exact counts) for one config, before any training (``num_classes``: see count_methods)."""
    cfg = peft_config if isinstance(peft_config, PeftConfig) else PeftConfig.from_dict(peft_config)
    counts = count_methods(space, cfg.to_dict()["methods"], num_classes)
    b, n = space.budget, counts["budgeted"]
    ok = (b.max_trainable is None or n <= b.max_trainable) and (b.min_trainable is None or n >= b.min_trainable)
    return ok, counts


@dataclass
class SpaceReport:
    """What ``validate_space`` found: errors, warnings and the exact sizes of the extreme configurations."""

    space: SearchSpace
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    smallest: dict[str, Any] | None = None  # {"methods": ..., "counts": ...}
    largest: dict[str, Any] | None = None
    stage1: dict[str, Any] | None = None  # {"smallest": ..., "largest": ...}
    per_method: dict[str, dict[str, int]] = field(default_factory=dict)  # method -> {"min", "max"} own params

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": self.errors, "warnings": self.warnings, "summary": describe(self.space),
                "smallest": self.smallest, "largest": self.largest, "stage1": self.stage1,
                "per_method": self.per_method}


def describe(space: SearchSpace) -> dict[str, Any]:
    """A compact, JSON-able summary of a space (what ``hybridsearch validate`` prints)."""
    methods = {}
    for n, m in space.methods.items():
        methods[n] = {"optional": m.optional, "params": {f: p.describe() for f, p in m.params.items()}}
        if m.layer_groups:
            methods[n]["layer_groups"] = [{"layers": g.layers, "rank": g.rank.describe() if g.rank else
                                           f"tie g{g.tie}"} for g in m.layer_groups]
        if space.stages:
            methods[n]["stage1"] = stage1_settings(m)
    return {
        "name": space.name, "source": space.source, "hash": space.space_hash(),
        "model": dataclasses.asdict(space.model), "num_classes": space.num_classes(),
        "data": {**dataclasses.asdict(space.data), "tasks": list(space.data.tasks)},
        "objectives": list(space.objectives), "directions": space.directions, "trials": space.trials,
        "stages": [stage_dict(s) for s in space.stages], "budget": dataclasses.asdict(space.budget),
        "fidelity": {**dataclasses.asdict(space.fidelity), "tasks": space.search_tasks},
        "pruner": {"kind": space.pruner.kind, **space.pruner.options},
        "sampler": {"kind": space.sampler.kind, "seed": space.sampler.seed, **space.sampler.options},
        "recipe": {k: p.describe() for k, p in space.recipe.items()}, "methods": methods,
        "baselines": ("last" if space.baselines_last else "first") if space.baselines else None,
        **{k: dataclasses.asdict(v) for k in ("startup", "final", "single_arm") if (v := getattr(space, k))},
    }


def validate_space(space: SearchSpace, count: bool = True) -> SpaceReport:
    """Checks that need the model: it resolves, every value of every method applies to it, and the budget can
    be met (the smallest configuration fits ``max_trainable``, the largest reaches ``min_trainable``)."""
    rep = SpaceReport(space)
    src = Path(space.source).name if Path(space.source).is_file() else space.source
    err = Errors(src)
    warn = Errors(src)
    if _check_model(space, err, warn) and count:
        _check_counts(space, rep, err, warn)
    rep.errors, rep.warnings = err.items, warn.items
    return rep


def _check_model(space: SearchSpace, err: Errors, warn: Errors) -> bool:
    from ...errors import CheckpointError
    from ...models import MODELS, checkpoint_path

    m = space.model
    try:  # a registered name, a path, or a Hugging Face Hub id in the local cache
        where = checkpoint_path(m.name)
    except CheckpointError as e:
        err.add("model.name", str(e))
        return False
    if where is not None and not where.exists():
        err.add("model.name", f"{m.name!r} is neither a registered model, an existing checkpoint path nor a "
                              f"cached Hub id (ORG/NAME); allowed: {', '.join(MODELS.names())}")
        return False
    if m.checkpoint is not None and not Path(m.checkpoint).exists():
        warn.add("model.checkpoint", f"{m.checkpoint} does not exist on this machine")
    elif m.checkpoint is None and m.name in MODELS:
        bundled = MODELS.get(m.name).checkpoint
        if bundled is None:
            warn.add("model.checkpoint", f"none given and {m.name} has no bundled weights: pass the pretrained "
                                         "checkpoint at run time (otherwise the backbone is randomly initialised)")
        else:
            try:
                bundled()
            except HybridSearchError as e:
                warn.add("model.checkpoint", str(e))
    if space.data.root is not None and not Path(space.data.root).exists():
        warn.add("data.root", f"{space.data.root} does not exist on this machine")
    return True


def _check_counts(space: SearchSpace, rep: SpaceReport, err: Errors, warn: Errors) -> None:
    try:
        count_methods(space, {})
    except Exception as e:  # the model itself cannot be built
        err.add("model.name", f"cannot build {space.model.name!r}: {e}")
        return
    small, large = {}, {}
    for n, ms in space.methods.items():
        lo, hi = _method_extremes(space, ms, err)
        for target, s in ((small, lo), (large, hi)):
            if s is not None and (target is large or not ms.optional):
                target[n] = s
        own = [_own(space, n, s) for s in (lo, hi)]
        rep.per_method[n] = {"min": own[0], "max": own[1]}
    rep.smallest = _counted(space, small, "the smallest configuration", err)
    rep.largest = _counted(space, large, "the largest configuration", err)
    if space.stages:
        st = {n: stage1_settings(m) for n, m in space.methods.items()}
        on = {n: s for n, s in st.items() if not space.methods[n].optional}
        rep.stage1 = {"smallest": _counted(space, on, "the smallest stage-1 configuration", err),
                      "largest": _counted(space, st, "the largest stage-1 configuration", err)}
    _check_budget_bounds(space, rep, err, warn)


def _own(space: SearchSpace, name: str, settings: dict | None) -> int:
    if settings is None:
        return 0
    try:
        return count_methods(space, {name: settings})["by_method"].get(name, 0)
    except Exception:
        return 0


def _counted(space: SearchSpace, methods: dict, what: str, err: Errors) -> dict[str, Any] | None:
    try:
        return {"methods": methods, "counts": count_methods(space, methods)}
    except Exception as e:
        err.add("methods", f"{what} cannot be applied to {space.model.name}: {e}")
        return None


def _method_extremes(space: SearchSpace, ms: MethodSpace, err: Errors) -> tuple[dict | None, dict | None]:
    """(smallest, largest) settings of one method by exact counts, one parameter at a time: each categorical
    value and both ends of each int or float range are counted (a range need not grow the count: sdt's freeze
    ratios shrink it). ``None`` when the method is off at that end (every group rank 0)."""
    path = f"methods.{ms.name}"
    out: list[dict | None] = []
    for pick, end in ((min, 0), (max, -1)):
        base = {f: _end(p, end) for f, p in ms.params.items()}
        for f, p in ms.params.items():
            tried = _ends(p)
            if len(tried) > 1:
                scored = [(n, c) for c in tried
                          if (n := _score(space, ms, {**base, f: c}, f"{path}.params.{f}", err, c)) is not None]
                if scored:
                    base[f] = pick(scored, key=lambda t: t[0])[1]
        s = _with_groups(ms, base, end)
        if s is not None and _score(space, ms, s, path, err, None) is None:
            s = None
        out.append(s)
    return out[0], out[1]


def _end(p: Param, end: int) -> Any:
    c = p.candidates()
    return c[end] if isinstance(p, (IntParam, FloatParam)) else c[0]


def _ends(p: Param) -> list[Any]:
    """The values counted for one parameter: every categorical choice, or a range's two ends."""
    if isinstance(p, CategoricalParam):
        return list(p.choices)
    c = p.candidates()
    return [c[0], c[-1]] if isinstance(p, (IntParam, FloatParam)) and c[0] != c[-1] else [c[0]]


def _with_groups(ms: MethodSpace, base: dict, end: int) -> dict | None:
    if not ms.layer_groups:
        return dict(base)
    ranks, drawn = {}, []
    for g in ms.layer_groups:
        r = drawn[g.tie] if g.tie is not None else sorted(g.rank.candidates())[end]
        drawn.append(r)
        if r > 0:
            ranks.update(dict.fromkeys(layer_keys(g.layers), r))
    return {**base, "rank": ranks} if ranks else None


def _score(space: SearchSpace, ms: MethodSpace, settings: dict, path: str, err: Errors, choice: Any) -> int | None:
    try:
        return count_methods(space, {ms.name: settings})["budgeted"]
    except Exception as e:
        what = f"choice {choice!r}" if choice is not None else f"{settings}"
        if (path, str(e)) not in err.seen:  # the same failure shows at both ends of a range: report it once
            err.seen.add((path, str(e)))
            err.add(path, f"{what} cannot be applied to {space.model.name}: {e}")
        return None


def _check_budget_bounds(space: SearchSpace, rep: SpaceReport, err: Errors, warn: Errors) -> None:
    b = space.budget
    head = "" if b.include_head else " (head excluded)"
    checks = [("", rep.smallest, rep.largest)]
    if rep.stage1:
        checks.append(("stage-1 ", rep.stage1["smallest"], rep.stage1["largest"]))
    for what, lo, hi in checks:
        if b.max_trainable is not None and lo and lo["counts"]["budgeted"] > b.max_trainable:
            off = "every optional method off, the others at their smallest"
            err.add("budget.max_trainable", f"{b.max_trainable:,} is below the smallest {what}configuration "
                                            f"({lo['counts']['budgeted']:,} trainable{head}: {off}); "
                                            "no configuration can meet it")
        if b.min_trainable is not None and hi and hi["counts"]["budgeted"] < b.min_trainable:
            err.add("budget.min_trainable", f"{b.min_trainable:,} is above the largest {what}configuration "
                                            f"({hi['counts']['budgeted']:,} trainable{head}); "
                                            "no configuration can meet it")
    if b.max_trainable is None or rep.smallest is None:
        return
    floor = rep.smallest["counts"]["budgeted"]
    for n, own in rep.per_method.items():
        if space.methods[n].optional and floor + own["min"] > b.max_trainable:
            warn.add(f"methods.{n}", f"its smallest setting ({own['min']:,} parameters) never fits "
                                     f"budget.max_trainable {b.max_trainable:,}: it can never be switched on")
