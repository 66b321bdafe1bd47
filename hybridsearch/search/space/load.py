"""Loading a search space from YAML (a path, or a bundled name from ``search_spaces/``) into a checked
``SearchSpace``: every problem in the file is reported at once, each with its key path and allowed values
(docs/spaces.md is the format)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from ...errors import ConfigError, HybridSearchError
from ...peft import METHODS
from ...safeio import load_yaml
from ...tasks import data_kinds, family_of
from ...training.recipe import OPTIMIZERS, SCHEDULES, Recipe
from ..samplers import PRUNER_LOWS, PRUNERS, SAMPLERS, pruner_defaults
from .checks import (
    MAX_COUNT,
    MAX_SEED,
    MISSING,
    Check,
    Errors,
    SpaceError,
    c_bool,
    c_choice,
    c_float,
    c_int,
    c_str,
    get,
    join,
    mapping,
    show,
)
from .methods import parse_methods
from .params import FixedParam, Param, parse_param
from .schema import (
    Budget,
    DataSpace,
    Fidelity,
    FinalSpec,
    MethodSpace,
    ModelSpace,
    PrunerSpec,
    SamplerSpec,
    SearchSpace,
    SingleArm,
    Stage,
    StartupSpec,
)

BUNDLED_PACKAGE = "hybridsearch.search_spaces"
_TOP = ("name", "description", "model", "data", "methods", "budget", "objectives", "stages", "fidelity",
        "pruner", "sampler", "recipe", "trials", "baselines", "final", "startup", "single_arm")


def bundled_spaces() -> list[str]:
    """Names of the search spaces shipped with the package."""
    root = resources.files(BUNDLED_PACKAGE)
    return sorted(p.name.rsplit(".", 1)[0] for p in root.iterdir() if p.name.endswith((".yaml", ".yml")))


def _resolve(ref: str | Path) -> tuple[Any, str]:
    """(readable file, name for messages): an existing path, else a bundled space by name."""
    path = Path(ref)
    if path.is_file():
        return path, str(ref)
    name = str(ref)
    if "/" not in name and "\\" not in name:
        fname = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
        bundled = resources.files(BUNDLED_PACKAGE) / fname
        if bundled.is_file():
            return bundled, fname
    raise ConfigError(f"{ref}: no such search space file; bundled spaces: {', '.join(bundled_spaces())}")


def load_space(ref: str | Path) -> SearchSpace:
    """Load and check a space: a path, or a bundled name (``mini_vtab`` / ``mini_vtab.yaml``)."""
    file, label = _resolve(ref)
    data = load_yaml(file, label, error=ConfigError, what="search space")
    stem = label.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return space_from_dict(data, source=label, default_name=stem, location=str(file))


def space_from_dict(data: Any, source: str = "<dict>", default_name: str = "space",
                    location: str | None = None) -> SearchSpace:
    """Build a space from parsed YAML; every problem found is reported at once as ``SpaceError``."""
    errs = Errors(source)
    try:
        space = _build(data, errs, default_name, location or source)
    except HybridSearchError:
        raise
    except Exception as e:  # a bug in a check must not hide the user's file behind a traceback
        errs.add("", f"could not be checked ({type(e).__name__}: {e})")
        space = None
    if errs.items or space is None:
        raise SpaceError(errs.items or [f"{source}: invalid search space"])
    return space


def _build(data: Any, errs: Errors, default_name: str, location: str) -> SearchSpace | None:
    if not isinstance(data, dict):
        errs.add("", f"expected a mapping with keys {', '.join(_TOP)}, got {show(data)}")
        return None
    d = mapping(data, "", errs, _TOP, required=("model", "data", "methods"))
    model = _parse_model(d.get("model"), errs)
    data_ = _parse_data(d.get("data"), errs)
    fidelity = _parse_fidelity(d.get("fidelity"), data_, errs)
    objectives = _parse_objectives(d.get("objectives", ["accuracy"]), errs)
    methods = parse_methods(d.get("methods"), errs)
    recipe = _parse_recipe(d.get("recipe"), errs)
    budget = _parse_budget(d.get("budget"), errs)
    trials = get(d, "trials", "", errs, c_int(1, hi=MAX_COUNT), 20)
    baselines = get(d, "baselines", "", errs, c_choice(True, False, "first", "last"), False)
    stages = _parse_stages(d.get("stages"), trials, errs)
    n_tasks = len(fidelity.tasks or (data_.tasks if data_ else ()))
    pruner = _parse_pruner(d.get("pruner"), fidelity, n_tasks, objectives, errs)
    sampler = _parse_sampler(d.get("sampler"), errs)
    final = _parse_final(d.get("final"), errs)
    startup = _parse_startup(d.get("startup"), errs)
    single_arm = _parse_single_arm(d.get("single_arm"), methods, stages, errs)
    _cross_checks(model, data_, methods, recipe, stages, errs)
    if errs.items or model is None or data_ is None:
        return None
    return SearchSpace(
        name=get(d, "name", "", errs, c_str(), default_name), source=location, model=model, data=data_,
        methods=methods, budget=budget, objectives=objectives, stages=stages, fidelity=fidelity, pruner=pruner,
        sampler=sampler, recipe=recipe, trials=trials, baselines=baselines is not False,
        baselines_last=baselines == "last", final=final, startup=startup,
        single_arm=single_arm,
        description=get(d, "description", "", errs, c_str(null=True), "") or "",
    )


def _parse_model(raw: Any, errs: Errors) -> ModelSpace | None:
    d = mapping(raw, "model", errs, ("name", "checkpoint", "num_classes"), required=("name",))
    name = get(d, "name", "model", errs, c_str())
    if name is None:
        return None
    return ModelSpace(name, get(d, "checkpoint", "model", errs, c_str(null=True)),
                      get(d, "num_classes", "model", errs, c_int(1, null=True, hi=MAX_COUNT)))


def _parse_data(raw: Any, errs: Errors) -> DataSpace | None:
    d = mapping(raw, "data", errs, ("kind", "root", "tasks", "train_split", "val_split"),
                 required=("kind", "tasks"))
    kind = get(d, "kind", "data", errs, c_choice(*data_kinds()))
    if kind is None:
        return None
    family = family_of(kind)
    tasks = _parse_tasks(d.get("tasks"), kind, family.known_tasks(kind), errs)
    train_def, val_def = family.default_splits
    train = get(d, "train_split", "data", errs, c_choice(*family.splits), train_def)
    val = get(d, "val_split", "data", errs, c_choice(*family.splits), val_def)
    if val == "test":
        errs.add("data.val_split", "searching on the test split leaks it into model selection; "
                                   f"allowed: {', '.join(s for s in family.splits if s != 'test')}")
    if train in ("test",) or train == val or (train == "train800val200" and val == "val200"):
        errs.add("data.train_split", f"{train!r} overlaps val_split {val!r}; use {train_def} with {val_def}")
    return DataSpace(kind, tuple(tasks), get(d, "root", "data", errs, c_str(null=True)), train, val)


def _parse_tasks(raw: Any, kind: str, known: tuple[str, ...] | None, errs: Errors) -> list[str]:
    if not isinstance(raw, list) or not raw:
        if raw is not None:
            errs.add("data.tasks", f"expected a non-empty list of task names, got {show(raw)}")
        return []
    out: list[str] = []
    for i, t in enumerate(raw):
        if not isinstance(t, str):
            errs.add(f"data.tasks[{i}]", f"expected a task name, got {show(t)}")
        elif known is not None and t not in known:
            errs.add(f"data.tasks[{i}]", f"unknown {kind} task {t!r}; allowed: {', '.join(known)}")
        elif t in out:
            errs.add(f"data.tasks[{i}]", f"duplicate task {t!r}")
        else:
            out.append(t)
    return out


def _parse_fidelity(raw: Any, data: DataSpace | None, errs: Errors) -> Fidelity:
    keys = ("epochs", "min_epochs", "max_train_examples", "max_val_examples", "tasks")
    d = mapping(raw, "fidelity", errs, keys)
    epochs = get(d, "epochs", "fidelity", errs, c_int(1, hi=MAX_COUNT), 10)
    min_epochs = get(d, "min_epochs", "fidelity", errs, c_int(1, hi=MAX_COUNT), 1)
    if min_epochs > epochs:
        errs.add("fidelity.min_epochs", f"{min_epochs} > epochs {epochs} (min > max)")
    tasks = _fidelity_tasks(d.get("tasks"), data, errs)
    return Fidelity(epochs, min_epochs, get(d, "max_train_examples", "fidelity", errs, c_int(1, null=True)),
                    get(d, "max_val_examples", "fidelity", errs, c_int(1, null=True)), tasks)


def _fidelity_tasks(raw: Any, data: DataSpace | None, errs: Errors) -> tuple[str, ...]:
    """``null`` (all), an int (the first n data.tasks) or a subset of data.tasks."""
    all_tasks = list(data.tasks) if data else []
    if raw is None:
        return ()
    if isinstance(raw, int) and not isinstance(raw, bool):
        if not 1 <= raw <= max(len(all_tasks), 1):
            errs.add("fidelity.tasks", f"must be between 1 and {len(all_tasks)} (the number of data.tasks), got {raw}")
            return ()
        return tuple(all_tasks[:raw])
    if not isinstance(raw, list) or not raw:
        errs.add("fidelity.tasks", f"expected null, a count or a non-empty list of data.tasks, got {show(raw)}")
        return ()
    for i, t in enumerate(raw):
        if t not in all_tasks:
            errs.add(f"fidelity.tasks[{i}]", f"{t!r} is not in data.tasks; allowed: {', '.join(all_tasks)}")
    return tuple(t for t in all_tasks if t in raw)


def _parse_objectives(raw: Any, errs: Errors) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if raw in (["accuracy"], ["accuracy", "params"]):
        return tuple(raw)
    errs.add("objectives", f"{raw!r} is not allowed; allowed: [accuracy] (maximize mean validation accuracy) "
                           "or [accuracy, params] (also minimize trainable parameters)")
    return ("accuracy",)


# recipe key -> check; keys in _ALWAYS are always in a trial's recipe (at ``Recipe``'s default unless searched),
# the others only when a space declares them
_RECIPE: dict[str, Check] = {
    "optimizer": c_choice(*OPTIMIZERS),
    "lr": c_float(0, open_lo=True),
    "weight_decay": c_float(0),
    "batch_size": c_int(1),
    "eval_batch_size": c_int(1),
    "schedule": c_choice(*SCHEDULES),
    "warmup_epochs": c_float(0),
    "min_lr": c_float(0),
    "grad_clip": c_float(0, open_lo=True, null=True),
    "method_lr_mult": c_float(0),
    "method_decay_mult": c_float(0),
    "head_lr_mult": c_float(0),
    "head_decay_mult": c_float(0),
    "train_on_inputs": c_bool(),  # language spaces: loss on the prompt too (reference) or not
}
_ALWAYS = ("optimizer", "lr", "weight_decay", "batch_size", "eval_batch_size", "schedule", "warmup_epochs", "min_lr",
           "grad_clip")


def _parse_recipe(raw: Any, errs: Errors) -> dict[str, Param]:
    if isinstance(raw, dict) and "epochs" in raw:
        errs.add("recipe.epochs", "unknown key: the number of epochs is fidelity.epochs")
        raw = {k: v for k, v in raw.items() if k != "epochs"}
    d = mapping(raw, "recipe", errs, _RECIPE)
    out: dict[str, Param] = {}
    for k, check in _RECIPE.items():
        if k in d:
            p = parse_param(d[k], f"recipe.{k}", errs, check)
            if p is not None:
                out[k] = p
        elif k in _ALWAYS:
            out[k] = FixedParam(Recipe.__dataclass_fields__[k].default)
    return out


def _parse_budget(raw: Any, errs: Errors) -> Budget:
    d = mapping(raw, "budget", errs, ("max_trainable", "min_trainable", "include_head"))
    hi = get(d, "max_trainable", "budget", errs, c_int(1, null=True))
    lo = get(d, "min_trainable", "budget", errs, c_int(0, null=True))
    if hi is not None and lo is not None and lo > hi:
        errs.add("budget.min_trainable", f"{lo} > max_trainable {hi} (min > max)")
    return Budget(hi, lo, get(d, "include_head", "budget", errs, c_bool(), True))


def _parse_stages(raw: Any, trials: int, errs: Errors) -> tuple[Stage, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not 1 <= len(raw) <= 2:
        errs.add("stages", f"expected a list of 1 or 2 stages ([select] or [select, tune]), got {show(raw)}")
        return ()
    out = []
    for i, s in enumerate(raw):
        path = f"stages[{i}]"
        d = mapping(s, path, errs, ("name", "trials", "select", "tune", "drop_one"))
        want = "select" if i == 0 else "tune"
        for k in ("select", "tune"):
            get(d, k, path, errs, c_bool(), False)
        if d.get(want) is not True or d.get("select" if want == "tune" else "tune") is True:
            errs.add(path, f"stage {i + 1} must set {want}: true (stage 1 selects methods, stage 2 tunes them)")
        drop = get(d, "drop_one", path, errs, c_bool(), False)
        if drop and want == "select":
            errs.add(join(path, "drop_one"), "only the tune stage (stage 2) may drop a method")
        name = get(d, "name", path, errs, c_str(), want)
        out.append(Stage(name, get(d, "trials", path, errs, c_int(1, hi=MAX_COUNT), trials), want == "select",
                         want == "tune", bool(drop)))
    return tuple(out)


def _parse_pruner(raw: Any, fid: Fidelity, n_tasks: int, objectives: tuple[str, ...], errs: Errors) -> PrunerSpec:
    kind = raw.get("kind", "none") if isinstance(raw, dict) else "none"
    if kind not in PRUNERS:
        errs.add("pruner.kind", f"{kind!r} is not allowed; allowed: {', '.join(PRUNERS.names())}")
        return PrunerSpec()
    keys = PRUNERS.get(kind).options
    d = mapping(raw, "pruner", errs, ("kind", *keys))
    if len(objectives) > 1 and kind != "none":
        errs.add("pruner.kind", f"{kind!r}: Optuna cannot prune a multi-objective study (trial.report raises); "
                                "allowed with two objectives: none")
    defaults = pruner_defaults(kind, fid.min_epochs, fid.epochs * max(n_tasks, 1))
    opts = {k: get(d, k, "pruner", errs, c_int(PRUNER_LOWS.get(k, 1)), defaults[k]) for k in keys}
    if "max_resource" in opts and opts["min_resource"] > opts["max_resource"]:
        errs.add("pruner.min_resource", f"{opts['min_resource']} > max_resource {opts['max_resource']} (min > max)")
    return PrunerSpec(kind, opts)


def _parse_sampler(raw: Any, errs: Errors) -> SamplerSpec:
    kind = raw.get("kind", "tpe") if isinstance(raw, dict) else "tpe"
    if kind not in SAMPLERS:
        errs.add("sampler.kind", f"{kind!r} is not allowed; allowed: {', '.join(SAMPLERS.names())}")
        return SamplerSpec()
    spec = SAMPLERS.get(kind)
    defaults = spec.options
    d = mapping(raw, "sampler", errs, ("kind", "seed", *defaults))
    seed = get(d, "seed", "sampler", errs, c_int(0, null=True, hi=MAX_SEED), 0)
    opts = {}
    for k, v in defaults.items():
        check = c_bool() if isinstance(v, bool) else c_int((spec.lows or {}).get(k, 0))
        opts[k] = get(d, k, "sampler", errs, check, v)
    if kind == "tpe" and opts["group"] and not opts["multivariate"]:
        errs.add("sampler.group", "group: true needs multivariate: true (Optuna's TPE)")
    return SamplerSpec(kind, seed, opts)


def _parse_final(raw: Any, errs: Errors) -> FinalSpec | None:
    """``final: {top_k, seeds}``: null or absent, none."""
    if raw is None:
        return None
    d = mapping(raw, "final", errs, ("top_k", "seeds"))
    return FinalSpec(get(d, "top_k", "final", errs, c_int(1, hi=MAX_COUNT), 3),
                     get(d, "seeds", "final", errs, c_int(2, hi=100), 3))


def _parse_startup(raw: Any, errs: Errors) -> StartupSpec | None:
    if raw is None:
        return None
    d = mapping(raw, "startup", errs, ("design",))
    return StartupSpec(get(d, "design", "startup", errs, c_int(0, hi=MAX_COUNT), 0))


def _parse_single_arm(raw: Any, methods: dict[str, MethodSpace], stages: tuple[Stage, ...],
                      errs: Errors) -> SingleArm | None:
    if raw is None:
        return None
    d = mapping(raw, "single_arm", errs, ("trials",))
    if stages:
        errs.add("single_arm", "not with stages: the arm tunes each method of an unstaged space alone")
    if methods and not any(m.optional for m in methods.values()):
        errs.add("single_arm", "no method is optional: there is no single method to tune alone")
    return SingleArm(get(d, "trials", "single_arm", errs, c_int(1, hi=MAX_COUNT), 4))


def _cross_checks(model: ModelSpace | None, data: DataSpace | None, methods: dict[str, MethodSpace],
                  recipe: dict[str, Param], stages: tuple[Stage, ...], errs: Errors) -> None:
    if stages and stages[0].select:
        if not any(m.optional for m in methods.values()):
            errs.add("stages[0].select", "stage 1 switches methods on and off, but no method is optional")
        for k, p in recipe.items():
            if p.resolved is MISSING:
                errs.add(f"recipe.{k}", "a searched recipe value needs 'default' (stage 1 samples methods only)")
    kind = _model_kind(model.name) if model else None
    if kind is None or data is None:
        return
    want = family_of(data.kind).model_kind
    if kind != want:
        errs.add("model.name", f"{model.name!r} is a {kind} model but data.kind {data.kind!r} needs a {want} model")
    for n in methods:
        if kind not in METHODS.get(n).kinds:
            errs.add(f"methods.{n}", f"not available for {model.name!r} ({kind}); "
                                     f"applies to {', '.join(METHODS.get(n).kinds)}")


def _model_kind(name: str) -> str | None:
    from ...models import MODELS

    return MODELS.get(name).kind if name in MODELS else None
