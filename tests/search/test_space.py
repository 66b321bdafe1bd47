"""Search spaces: loading, schema errors with key paths, conditional sampling, layer groups, stages, budget,
samplers and pruners, the ``validate`` command, and a property test over generated spaces."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridsearch.cli import main
from hybridsearch.errors import ConfigError
from hybridsearch.models import MODELS, MambaConfig, ModelSpec, VimConfig
from hybridsearch.peft import count_config
from hybridsearch.search import (
    SpaceError,
    bundled_spaces,
    check_budget,
    count_methods,
    load_space,
    space_from_dict,
    validate_space,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Stand-ins for proxy models that are not registered (yet) in this checkout: the library never fakes them.
_STAND_INS = {
    "vim-proxy": ModelSpec("vim", VimConfig(d_model=64, depth=4, img_size=32, patch_size=8, d_state=8,
                                            num_classes=10), "test stand-in"),
    "mamba-proxy": ModelSpec("lm", MambaConfig(d_model=64, n_layer=4, vocab_size=512), "test stand-in"),
}


@pytest.fixture(scope="module", autouse=True)
def proxies():
    added = [n for n in _STAND_INS if n not in MODELS]
    for n in added:
        MODELS.register(n, _STAND_INS[n])
    yield
    for n in added:
        MODELS._items.pop(n)


def base() -> dict:
    """A small valid space."""
    return {
        "model": {"name": "vim-proxy"},
        "data": {"kind": "mini_vtab", "tasks": ["mnist5k", "rotation"]},
        "fidelity": {"epochs": 2},
        "methods": {
            "lora_X": {"params": {"rank": {"int": [2, 8], "step": 2}, "scale": {"log": [0.01, 1.0]}}},
            "affix": {"params": {"tokens": {"int": [1, 2]}, "placement": ["dual_prefix", "single_prefix"],
                                 "projection": False}},
            "tune_D": {"optional": False},
        },
        "budget": {"max_trainable": 50000},
        "sampler": {"kind": "random", "seed": 0},
    }


def errors_of(d) -> list[str]:
    with pytest.raises(SpaceError) as e:
        space_from_dict(d, source="s.yaml")
    return e.value.errors


def run_trials(space, n: int, sampler=None, objective=None, **sample_kw) -> optuna.Study:
    study = optuna.create_study(directions=space.directions, sampler=sampler or space.make_sampler())
    for _ in range(n):
        trial = study.ask()
        cfg = space.sample(trial, **sample_kw)
        study.tell(trial, objective(cfg) if objective else (0.5 if len(space.objectives) == 1 else (0.5, 1.0)))
    return study


# -- bundled spaces -----------------------------------------------------------------------------------------------
def test_bundled_list():
    assert {"mini_vtab", "vim_vtab", "mamba_commonsense", "mamba2_commonsense", "tiny_debug"} <= set(bundled_spaces())


@pytest.mark.parametrize("name", ["mini_vtab", "tiny_debug", "mamba_commonsense", "mamba2_commonsense", "vim_vtab"])
def test_bundled_space_loads_validates_and_round_trips(name):
    space = load_space(name)
    assert load_space(f"{name}.yaml").space_hash() == space.space_hash()
    again = space_from_dict(json.loads(json.dumps(space.to_dict())))
    assert again.space_hash() == space.space_hash() and again.to_dict() == space.to_dict()
    report = validate_space(space, count=name != "vim_vtab")  # vim-small counts are covered below
    assert report.ok, report.errors
    if name != "vim_vtab":
        assert report.smallest["counts"]["budgeted"] <= space.budget.max_trainable
        assert report.largest["counts"]["budgeted"] >= report.smallest["counts"]["budgeted"]


def test_vim_vtab_is_the_reference_two_stage_search():
    space = load_space("vim_vtab")
    assert len(space.methods) == 19 and "parallel_adapter" not in space.methods
    assert space.data.tasks == ("clevr_count", "dmlab", "oxford_iiit_pet", "patch_camelyon", "sun397")
    assert [s.trials for s in space.stages] == [100, 100] and space.stages[1].drop_one
    s1 = space.stage_space(1)
    cfg = s1.fixed_config({f"use.{n}": True for n in space.methods}).peft.methods
    assert cfg["lora_X"].rank == 8 and cfg["lora_x_proj"].rank == 4 and cfg["lora_x_proj"].lr_mult == 0.1
    assert cfg["affix"].tokens == 1 and cfg["affix"].projection and cfg["tune_dt_bias"].mode == "unfreeze"
    # exact counts on vim-small for the stage-1 extremes (head = sun397's 397 classes)
    ok, counts = check_budget(space, s1.fixed_config({f"use.{n}": False for n in space.methods}).peft)
    assert ok and counts["trainable"] == counts["head"] == 384 * 397 + 397


# -- schema errors -------------------------------------------------------------------------------------------------
def test_valid_base_loads():
    space = space_from_dict(base(), source="s.yaml")
    assert list(space.methods) == ["lora_X", "affix", "tune_D"]  # canonical registry order
    assert space.recipe["lr"].resolved == 1e-3 and space.name == "space"


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.update(foo=1), "s.yaml: foo: unknown key; allowed: name, description, model"),
    (lambda d: d["methods"]["lora_X"]["params"]["rank"].update(int=[16, 4]),
     "s.yaml: methods.lora_X.params.rank.int: low 16 > high 4 (min > max)"),
    (lambda d: d["methods"].update(lora_Q={}), "s.yaml: methods.lora_Q: unknown method; allowed: parallel_adapter"),
    (lambda d: d["methods"]["lora_X"]["params"].update(rnk=4),
     "s.yaml: methods.lora_X.params.rnk: unknown key; allowed: layers, lr_mult, decay_mult, rank, scale"),
    (lambda d: d["methods"]["lora_X"]["params"].update(rank=-4),
     "s.yaml: methods.lora_X.params.rank: rank must be a positive integer, got -4"),
    (lambda d: d["methods"]["lora_X"]["params"].update(rank={"int": [-4, 8]}),
     "s.yaml: methods.lora_X.params.rank.int: low -4: rank must be a positive integer"),
    (lambda d: d["fidelity"].update(epochs="ten"), "s.yaml: fidelity.epochs: must be an integer, got 'ten'"),
    (lambda d: d["methods"]["affix"]["params"].update(placement=["dual_prefix", "nowhere"]),
     "s.yaml: methods.affix.params.placement[1]: 'nowhere' is not allowed; allowed: single_prefix"),
    (lambda d: d["methods"]["lora_X"]["params"].update(scale={"log": [0, 1]}),
     "s.yaml: methods.lora_X.params.scale.log: a log range needs low > 0"),
    (lambda d: d["methods"]["lora_X"]["params"].update(rank={"int": [2, 9], "step": 2}),
     "s.yaml: methods.lora_X.params.rank.step: high - low (7) must be a multiple of step 2"),
    (lambda d: d["methods"]["lora_X"]["params"].update(rank={"int": [2, 8], "float": [1, 2]}),
     "s.yaml: methods.lora_X.params.rank: a parameter mapping needs exactly one of int, float, log"),
    (lambda d: d["methods"]["lora_X"]["params"].update(rank={"int": [2, 8], "stp": 2}),
     "s.yaml: methods.lora_X.params.rank.stp: unknown key; allowed: int, step, log, default"),
    (lambda d: d["data"].update(tasks=["mnist5k", "cifar"]),
     "s.yaml: data.tasks[1]: unknown mini_vtab task 'cifar'; allowed: mnist5k"),
    (lambda d: d["data"].update(val_split="test"), "s.yaml: data.val_split: searching on the test split leaks"),
    (lambda d: d.update(objectives=["accuracy", "flops"]), "s.yaml: objectives: ['accuracy', 'flops'] is not"),
    (lambda d: d.update(objectives=["accuracy", "params"], pruner={"kind": "median"}),
     "s.yaml: pruner.kind: 'median': Optuna cannot prune a multi-objective study"),
    (lambda d: d.update(sampler={"kind": "cmaes"}), "s.yaml: sampler.kind: 'cmaes' is not allowed; allowed: tpe"),
    (lambda d: d.update(sampler={"kind": "random", "population_size": 10}),
     "s.yaml: sampler.population_size: unknown key; allowed: kind, seed"),
    (lambda d: d.update(budget={"max_trainable": 10, "min_trainable": 20}),
     "s.yaml: budget.min_trainable: 20 > max_trainable 10 (min > max)"),
    (lambda d: d.update(model={"name": "mamba-130m"}),
     "s.yaml: model.name: 'mamba-130m' is a lm model but data.kind 'mini_vtab' needs a vim model"),
    (lambda d: d.update(recipe={"epochs": 3}), "s.yaml: recipe.epochs: unknown key: the number of epochs is"),
    (lambda d: d.update(recipe={"optimizer": "adam"}), "s.yaml: recipe.optimizer: 'adam' (string) is not allowed"),
    (lambda d: d["methods"]["tune_D"].update(params={"layers": "3-1"}),
     "s.yaml: methods.tune_D.params.layers: range '3-1' has min > max"),
    (lambda d: d["methods"]["tune_D"].update(params={"layers": None}),
     "s.yaml: methods.tune_D.params.layers: None is not a layer spec; allowed: all, an int, 'a-b'"),
    (lambda d: d["methods"]["tune_D"].update(params={"layers": ["0-3", "0-999999999"]}),
     "s.yaml: methods.tune_D.params.layers[1]: layer '0-999999999' is beyond any model"),
    (lambda d: d["methods"].update(prompt={"params": {"layers": "0-1"}}),
     "s.yaml: methods.prompt.params.layers: prompt is not per layer"),
    (lambda d: d.update(stages=[{"tune": True}]), "s.yaml: stages[0]: stage 1 must set select: true"),
    (lambda d: d.update(stages=[{"select": True}], recipe={"lr": {"log": [1e-4, 1e-2]}}),
     "s.yaml: recipe.lr: a searched recipe value needs 'default'"),
    (lambda d: d.update(methods="lora_X"), "s.yaml: methods: expected a non-empty mapping"),
    (lambda d: d.update(baselines="yes"), "s.yaml: baselines: 'yes' (string) is not allowed; allowed: True, False"),
])
def test_schema_errors_name_key_path_and_allowed(mutate, expected):
    d = base()
    mutate(d)
    errs = errors_of(d)
    assert any(e.startswith(expected) for e in errs), errs


def test_space_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(SpaceError(["a: x: bad", "a: y: bad"])))
    assert e.errors == ["a: x: bad", "a: y: bad"] and str(e).startswith("a: x: bad (+1 more")


def test_all_errors_are_collected_and_message_is_one_line():
    d = base()
    d["methods"]["lora_X"]["params"]["rank"] = {"int": [8, 2]}
    d["fidelity"]["epochs"] = 0
    d["bogus"] = True
    with pytest.raises(ConfigError) as e:
        space_from_dict(d, source="s.yaml")
    assert len(e.value.errors) == 3 and "\n" not in str(e.value) and "(+2 more" in str(e.value)


def test_layer_group_errors():
    d = base()
    d["methods"]["lora_X"] = {"params": {"rank": 4}, "layer_groups": [
        {"layers": "0-1", "rank": [0, 4]}, {"layers": "1-2", "rank": [-1, 2]}, {"layers": 3, "tie": 3},
        {"layers": "all", "rank": 2}]}
    d["methods"]["affix"]["layer_groups"] = [{"layers": 0, "rank": 2}]
    errs = "\n".join(errors_of(d))
    for want in ("methods.lora_X.params.rank: set per group in layer_groups",
                 "methods.lora_X.layer_groups[1].layers: layers [1] are already in an earlier group",
                 "methods.lora_X.layer_groups[1].rank[0]: a group rank must be an integer >= 0",
                 "methods.lora_X.layer_groups[2].tie: must be the index of an earlier untied group; allowed: [0, 1]",
                 "methods.lora_X.layer_groups[3].layers: a group needs explicit layers",
                 "methods.affix.layer_groups: affix has no per-layer rank"):
        assert want in errs, errs


def test_files_bundled_names_and_malformed_yaml(tmp_path: Path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: {name: vim-proxy\ndata: [")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML \(line \d+, column \d+\)"):
        load_space(p)
    with pytest.raises(ConfigError, match="no such search space file; bundled spaces: .*mini_vtab"):
        load_space("nope")
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping with keys name"):
        load_space(p)
    p.write_text(json.dumps(load_space("tiny_debug").to_dict()))  # JSON is YAML
    assert load_space(str(p)).name == "tiny_debug"


def test_numeric_strings_from_yaml_are_numbers(tmp_path: Path):
    p = tmp_path / "s.yaml"
    p.write_text("model: {name: vim-proxy}\ndata: {kind: mini_vtab, tasks: [mnist5k]}\n"
                 "recipe: {lr: 1e-3, weight_decay: {log: [1e-5, 1e-3]}}\n"
                 "methods: {lora_X: {params: {scale: 1e-1}}}\n")
    space = load_space(p)
    assert space.recipe["lr"].resolved == 1e-3 and space.recipe["weight_decay"].low == 1e-5
    assert space.methods["lora_X"].params["scale"].resolved == 0.1


# -- sampling --------------------------------------------------------------------------------------------------
def test_params_of_an_off_method_are_never_suggested():
    space = load_space("mini_vtab")
    study = run_trials(space, 40, sampler=optuna.samplers.RandomSampler(seed=1))
    seen_on = seen_off = 0
    for t in study.trials:
        cfg = space.fixed_config(t.params)
        for m in space.methods:
            own = [k for k in t.params if k.startswith(f"{m}.")]
            if t.params[f"use.{m}"]:
                seen_on += 1
                assert own and m in cfg.peft.methods
            else:
                seen_off += 1
                assert not own and m not in cfg.peft.methods
    assert seen_on and seen_off


def test_fixed_config_rebuilds_a_trial_and_checks_params():
    space = load_space("mini_vtab")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    cfg = space.sample(trial)
    again = space.fixed_config(trial.params)
    assert again.peft.to_dict() == cfg.peft.to_dict() and again.recipe == cfg.recipe
    assert cfg.params == trial.params and cfg.recipe["epochs"] == space.fidelity.epochs == 3
    with pytest.raises(ConfigError, match="params: missing 'recipe.lr'"):
        space.fixed_config({k: v for k, v in trial.params.items() if k != "recipe.lr"})
    bad = {**trial.params, "use.lora_X": True, "lora_X.rank": 3, "lora_X.scale": 0.1}
    with pytest.raises(ConfigError, match=r"params.lora_X.rank: 3 is outside int 2..16 step 2"):
        space.fixed_config(bad)


def test_layer_groups_per_group_ranks_and_tying():
    space = load_space("tiny_debug")
    common = {"use.affix": False, "recipe.lr": 1e-3, "tune_D.lr_mult": 1.0}
    p = {**common, "use.lora_X": True, "lora_X.rank.g0": 0, "lora_X.rank.g1": 8, "lora_X.lr_mult": 1.0,
         "use.lora_Z": True, "lora_Z.rank.g0": 4, "lora_Z.rank.g1": 2, "lora_Z.lr_mult": 1.0}
    cfg = space.fixed_config(p).peft.methods
    assert cfg["lora_X"].rank == {"2-3": 8}  # group 0 at rank 0: layers 0-1 left out
    assert cfg["lora_Z"].rank == {"0": 4, "1-2": 2, "3": 4}  # layer 3 tied to group 0
    counts = count_methods(space, {"lora_Z": cfg["lora_Z"].to_dict()})
    assert counts["by_method"]["lora_Z"] == (4 + 2 + 2 + 4) * (64 + 128)
    study = run_trials(space, 20)
    for t in study.trials:
        assert not any(k.startswith("lora_Z.rank.g2") for k in t.params)  # the tied group has no own name
        if t.params["use.lora_X"] and t.params["lora_X.rank.g0"] == 0:
            assert set(space.fixed_config(t.params).peft.methods["lora_X"].rank) == {"2-3"}
    d = space.to_dict()
    d["methods"]["lora_X"]["layer_groups"][1]["rank"] = [0]
    off = space_from_dict(d).fixed_config({**p, "lora_X.rank.g1": 0})
    assert "lora_X" not in off.peft.methods  # every group at rank 0: the method is off


def test_method_multipliers_and_head_recipe_keys():
    space = load_space("vim_vtab").stage_space(2, ["lora_X", "tune_A"])
    p = {"drop": "none", "lora_X.rank": 8, "lora_X.scale": 0.1, "lora_X.lr_mult": 2.0, "lora_X.decay_mult": 0.5,
         "tune_A.decay_mult": 50.0, "tune_A.lr_mult": 1.0, "recipe.head_lr_mult": 0.2, "recipe.head_decay_mult": 3.0}
    cfg = space.fixed_config(p)
    x, a = cfg.peft.methods["lora_X"], cfg.peft.methods["tune_A"]
    assert (x.lr_mult, x.decay_mult, a.decay_mult) == (2.0, 0.5, 50.0)  # tune_A's own range (to 100) wins
    assert cfg.recipe["head_lr_mult"] == 0.2 and cfg.recipe["epochs"] == 100 and "method_lr_mult" not in cfg.recipe
    with pytest.raises(ConfigError, match=r"params.tune_A.decay_mult: 500.0 is outside log 0.1..100"):
        space.fixed_config({**p, "tune_A.decay_mult": 500.0})
    full = load_space("vim_vtab")
    on = {f"use.{m}": m in ("lora_X", "tune_A") for m in full.methods}
    stage1 = full.stage_space(1).fixed_config(on)
    assert list(stage1.peft.methods) == ["lora_X", "tune_A"] and stage1.params == on
    assert stage1.peft.methods["lora_X"].lr_mult == 1.0 and stage1.peft.methods["tune_A"].decay_mult == 10.0
    assert stage1.recipe["head_lr_mult"] == 1.0


def test_baseline_params_use_defaults_else_the_middle():
    d = base()
    d["methods"]["lora_X"]["params"]["rank"]["default"] = 4
    d["recipe"] = {"lr": {"log": [1e-4, 1e-2]}, "weight_decay": {"float": [0.0, 0.1], "step": 0.05}}
    space = space_from_dict({**d, "baselines": True}, source="s.yaml")
    assert space.baselines and "baselines" in space.to_dict()
    assert "baselines" not in space_from_dict(base()).to_dict()  # unset: old studies keep their space hash
    params = space.baseline_params()
    assert list(params) == ["tune_D", "lora_X", "affix"]  # tune_D is always on: the base is it (and the head)
    assert params["lora_X"]["lora_X.rank"] == 4  # default
    assert params["lora_X"]["lora_X.scale"] == pytest.approx(0.1)  # geometric middle of a log range
    assert params["affix"]["affix.tokens"] == 2 and params["affix"]["affix.placement"] == "dual_prefix"
    assert params["tune_D"]["recipe.lr"] == pytest.approx(1e-3)
    assert params["tune_D"]["recipe.weight_decay"] == pytest.approx(0.05)
    for name, p in params.items():  # each is a valid configuration of the space with exactly that method
        cfg = space.fixed_config(p)
        assert set(cfg.peft.methods) == {"tune_D", name}
    d["methods"]["tune_D"]["optional"] = True  # without always-on methods the base trains the head alone
    assert list(space_from_dict({**d, "baselines": True}).baseline_params()) == ["head_only", "lora_X", "affix",
                                                                                 "tune_D"]


# -- stages ------------------------------------------------------------------------------------------------------
def test_stage_spaces():
    space = load_space("vim_vtab")
    s1 = space.stage_space(1)
    study = run_trials(space, 5, stage=1, sampler=optuna.samplers.RandomSampler(seed=0))
    for t in study.trials:
        assert set(t.params) == {f"use.{m}" for m in space.methods}
    best = study.trials[0]
    chosen = space.selected_methods(best.params)
    assert chosen == [m for m in space.methods if best.params[f"use.{m}"]]
    s2 = space.stage_space(2, ["lora_X", "affix", "tune_A"])
    assert s2.drop_one and s2.stage == 2 and all(not m.optional for m in s2.methods.values())
    assert s1.space_hash() != s2.space_hash() != space.space_hash()
    dropped = s2.fixed_config({"drop": "lora_X", "affix.tokens": 2, "affix.lr_mult": 1.0, "affix.decay_mult": 1.0,
                               "tune_A.decay_mult": 1.0, "tune_A.lr_mult": 1.0, "recipe.head_lr_mult": 1.0,
                               "recipe.head_decay_mult": 1.0})
    assert list(dropped.peft.methods) == ["affix", "tune_A"] and "lora_X.rank" not in dropped.params
    study = run_trials(space, 6, stage=2, chosen=["lora_X", "affix"], sampler=optuna.samplers.RandomSampler(seed=0))
    for t in study.trials:
        assert not any(k.startswith("use.") for k in t.params)
        assert (t.params["drop"] == "lora_X") == ("lora_X.rank" not in t.params)
    with pytest.raises(ConfigError, match="pass the methods the best stage-1 trial switched on"):
        space.stage_space(2)
    with pytest.raises(ConfigError, match="lora_Q not in this space"):
        space.stage_space(2, ["lora_Q"])
    with pytest.raises(ConfigError, match="no stage 3; allowed: 1, 2"):
        space.stage_space(3)
    with pytest.raises(ConfigError, match="this space has no stages"):
        load_space("mini_vtab").stage_space(1)


# -- objectives, samplers, pruners --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, extra", [("tpe", {"n_startup_trials": 3}), ("random", {}),
                                         ("nsga2", {"population_size": 4}), ("gp", {"n_startup_trials": 3})])
@pytest.mark.parametrize("objectives", [["accuracy"], ["accuracy", "params"]])
def test_each_sampler_runs_the_conditional_space(kind, extra, objectives):
    d = base()
    d.update(sampler={"kind": kind, "seed": 0, **extra}, objectives=objectives)
    space = space_from_dict(d)
    assert space.directions == (["maximize"] if len(objectives) == 1 else ["maximize", "minimize"])

    def objective(cfg):
        ok, counts = check_budget(space, cfg.peft)
        acc = 0.1 * len(cfg.peft.methods)
        return acc if len(objectives) == 1 else (acc, float(counts["trainable"]))

    study = run_trials(space, 5 if kind == "gp" else 6, objective=objective)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert all("tune_D" in space.fixed_config(t.params).peft.methods for t in study.trials)  # always on


def test_make_sampler_and_pruner():
    space = load_space("mini_vtab")
    s = space.make_sampler(seed=7)
    assert isinstance(s, optuna.samplers.TPESampler) and s._rng.rng.randint(1000) == \
        optuna.samplers.TPESampler(seed=7)._rng.rng.randint(1000)
    assert isinstance(space.make_pruner(), optuna.pruners.SuccessiveHalvingPruner)
    d = space.to_dict()
    for kind, cls in (("hyperband", optuna.pruners.HyperbandPruner), ("median", optuna.pruners.MedianPruner),
                      ("none", optuna.pruners.NopPruner)):
        d["pruner"] = {"kind": kind}
        sp = space_from_dict(d)
        assert isinstance(sp.make_pruner(), cls)
    assert sp.to_dict()["pruner"] == {"kind": "none"}
    d["pruner"] = {"kind": "hyperband"}
    max_resource = space.fidelity.epochs * len(space.search_tasks)  # epochs summed over the tasks
    assert space_from_dict(d).pruner.options == {"min_resource": 1, "max_resource": max_resource,
                                                 "reduction_factor": 3}


# -- budget ---------------------------------------------------------------------------------------------------------
def test_counts_match_count_config_and_budget_check():
    space = load_space("tiny_debug")
    cfg = {"lora_Z": {"rank": {"0-1": 2, "2-3": 4}}, "tune_D": {}}
    assert {k: v for k, v in count_methods(space, cfg).items() if k != "budgeted"} == \
        count_config("vim-proxy", {"methods": cfg}, 10)
    ok, counts = check_budget(space, {"methods": cfg})
    assert ok and counts["budgeted"] == counts["trainable"] <= 30000


def test_impossible_budget_is_an_error():
    d = base()
    d["budget"] = {"max_trainable": 1000}  # tune_D is always on: 1,024 + the 10-class head
    report = validate_space(space_from_dict(d, source="s.yaml"))
    assert not report.ok
    assert report.errors[0].startswith("s.yaml: budget.max_trainable: 1,000 is below the smallest configuration")
    assert "no configuration can meet it" in report.errors[0]
    d["budget"] = {"min_trainable": 10**7}
    report = validate_space(space_from_dict(d, source="s.yaml"))
    assert any("budget.min_trainable: 10,000,000 is above the largest configuration" in e for e in report.errors)
    d["budget"] = {"max_trainable": 2000, "include_head": False}  # tune_D (1,024) + affix (>= 1,024) never fit
    report = validate_space(space_from_dict(d, source="s.yaml"))
    assert report.ok and any("methods.affix: its smallest setting" in w for w in report.warnings)


def test_validate_reports_model_level_errors():
    d = base()
    d["methods"]["lora_X"]["params"]["layers"] = ["0-1", "2-7"]  # the model has 4 layers
    report = validate_space(space_from_dict(d, source="s.yaml"))
    assert any(e.startswith("s.yaml: methods.lora_X.params.layers: choice '2-7' cannot be applied to vim-proxy")
               for e in report.errors), report.errors
    d = base()
    d["model"] = {"name": "no-such-model"}
    report = validate_space(space_from_dict(d, source="s.yaml"))
    assert report.errors == ["s.yaml: model.name: 'no-such-model' is neither a registered model, an existing "
                             "checkpoint path nor a cached Hub id (ORG/NAME); allowed: " + ", ".join(MODELS.names())]


# -- the command -----------------------------------------------------------------------------------------------------
def test_validate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["validate", "tiny_debug", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["summary"]["name"] == "tiny_debug" and out["smallest"]["counts"]["trainable"] > 0
    assert main(["validate", "tiny_debug"]) == 0
    assert "smallest" in capsys.readouterr().out
    d = base()
    d["methods"]["lora_X"]["params"]["rank"] = {"int": [8, 2]}
    d["oops"] = 1
    p = tmp_path / "bad.yaml"
    p.write_text(json.dumps(d))
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"error: {p}: methods.lora_X.params.rank.int: low 8 > high 2 (min > max)" in err
    assert f"error: {p}: oops: unknown key" in err and "2 error(s)" in err
    assert main(["validate", str(p), "--json"]) == 2
    assert len(json.loads(capsys.readouterr().out)["errors"]) == 2
    assert main(["validate", "nope"]) == 2


# -- property test ------------------------------------------------------------------------------------------------
_junk = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 50) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6) | st.integers(), inner,
                                                                max_size=3),
    max_leaves=6,
)
_PATHS = [("methods", "lora_X", "params", "rank"), ("methods", "lora_X", "params", "scale"),
          ("methods", "affix", "params", "placement"), ("methods", "tune_D"), ("fidelity", "epochs"),
          ("recipe", "lr"), ("budget",), ("pruner",), ("sampler",), ("stages",), ("data", "tasks"), ("objectives",),
          ("methods", "lora_X", "layer_groups"), ("methods", "lora_X", "params", "layers"), ("model", "name"),
          ("methods",), ("methods", "lora_X", "stage1")]
_INVALID = [
    lambda d: d["methods"]["lora_X"]["params"].update(rank={"int": [9, 3]}),
    lambda d: d["methods"]["lora_X"]["params"].update(rank=0),
    lambda d: d["methods"].update(lora_nope={}),
    lambda d: d["methods"]["lora_X"]["params"].update(tokenz=1),
    lambda d: d.update(extra_key=1),
    lambda d: d["fidelity"].update(epochs=-1),
    lambda d: d.update(pruner={"kind": "asha"}),
    lambda d: d["budget"].update(max_trainable="many"),
    lambda d: d["data"].update(kind="imagenet"),
    lambda d: d["methods"]["lora_X"]["params"].update(scale={"log": [1.0, 0.5]}),
]


@st.composite
def valid_spaces(draw) -> dict:
    d = base()
    lo = draw(st.integers(1, 8))
    d["methods"]["lora_X"]["params"]["rank"] = {"int": [lo, lo + draw(st.integers(0, 8))]}
    d["methods"]["tune_D"]["optional"] = draw(st.booleans())
    if draw(st.booleans()):
        del d["methods"]["affix"]
    d["fidelity"] = {"epochs": draw(st.integers(1, 5)), "max_train_examples": draw(st.none() | st.integers(1, 900))}
    d["sampler"] = {"kind": draw(st.sampled_from(["tpe", "random", "nsga2", "gp"])), "seed": draw(st.integers(0, 9))}
    d["objectives"] = draw(st.sampled_from([["accuracy"], ["accuracy", "params"]]))
    d["pruner"] = {"kind": "none" if len(d["objectives"]) > 1 else draw(st.sampled_from(
        ["hyperband", "successive_halving", "median", "none"]))}
    d["recipe"] = {"lr": draw(st.sampled_from([1e-3, {"log": [1e-4, 1e-2]}])),
                   "batch_size": draw(st.integers(1, 64))}
    return d


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_spaces(), st.sampled_from([None, *range(len(_INVALID))]), st.sampled_from(_PATHS), _junk,
       st.booleans())
def test_generated_spaces_load_or_raise_config_error(d, invalid, path, junk, use_junk):
    space = space_from_dict(copy.deepcopy(d))  # every generated valid space loads ...
    trial = optuna.create_study(directions=space.directions, sampler=optuna.samplers.RandomSampler(0)).ask()
    space.sample(trial)  # ... and samples
    if invalid is not None:  # ... each known-invalid mutation is a ConfigError
        bad = copy.deepcopy(d)
        _INVALID[invalid](bad)
        with pytest.raises(ConfigError):
            space_from_dict(bad)
    if use_junk:  # ... and junk anywhere loads or is a ConfigError, nothing else
        node = d
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = junk
        try:
            space_from_dict(d)
        except ConfigError as e:
            assert str(e)


def test_language_baselines_have_no_head_only_and_pass_the_loss_choice(monkeypatch):
    """An LM has no classifier head, so its baselines are the methods alone; ``train_on_inputs`` reaches the
    LM trainer."""
    from hybridsearch.tasks import TaskData
    from hybridsearch.training.recipe import Recipe

    space = load_space("mamba_boolq")
    assert sorted(space.baseline_params()) == ["additional_scan", "affix", "lora_X"]
    recipe = Recipe.from_dict(space.fixed_config(space.baseline_params()["lora_X"]).recipe)
    assert recipe.train_on_inputs is False
    seen = {}

    def fake_train_lm(model, tokenizer, records, r, val=None, seed=0, on_epoch=None):
        seen["train_on_inputs"] = r.train_on_inputs
        raise RuntimeError("stop")

    monkeypatch.setattr("hybridsearch.training.lm.train_lm", fake_train_lm)
    task = TaskData("boolq", 0, [], [])
    with pytest.raises(RuntimeError, match="stop"):
        space.family.train(space, None, task, recipe, seed=0, on_epoch=lambda e, a: None)
    assert seen == {"train_on_inputs": False}


def test_mamba_mixed_baselines_keep_additional_scan_on():
    """``mamba_mixed``: Additional-scan is always on, so the baselines are it alone (what the search must beat)
    and it plus each optional method."""
    space = load_space("mamba_mixed")
    base = space.baseline_params()
    assert list(base) == ["additional_scan", "lora_X", "lora_out_proj", "affix"]
    for name, params in base.items():
        assert sorted(space.selected_methods(params)) == sorted({"additional_scan", name})
        assert list(space.fixed_config(params).peft.to_dict()["methods"]) == \
            [m for m in space.methods if m in ("additional_scan", name)]
