"""Space-filling designs and the simulator over a recorded table (search/space/design.py, search/simulate.py): a
synthetic table of mini_vtab's space stands in for benchmarks/search_table/table.json (no training here)."""

from __future__ import annotations

import json
import statistics

import numpy as np
import optuna
import pytest

from hybridsearch.errors import ConfigError
from hybridsearch.search.simulate import Counter, Table, TableObjective, configuration_space, score_of, simulate
from hybridsearch.search.space import CategoricalParam, FloatParam, IntParam, check_budget, load_space
from hybridsearch.search.space.design import config_at, dimensions, sobol_design

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("p, values", [
    (IntParam(2, 16, 2), [2, 4, 8, 16]),
    (FloatParam(0.01, 1.0, log=True), [0.01, 0.1, 1.0]),
    (FloatParam(0.0, 1.0, step=0.25), [0.0, 0.25, 1.0]),
    (CategoricalParam(("prefix", "suffix")), ["prefix", "suffix"]),
])
def test_unit_positions_round_trip(p, values):
    for v in values:
        assert p.from_unit(p.to_unit(v)) == pytest.approx(v)
    draws = [p.from_unit(u) for u in np.linspace(0, 0.999, 64)]
    assert all(p.contains(v) for v in draws)


@pytest.fixture(scope="module")
def space():
    return load_space("mini_vtab")


def test_sobol_design_is_distinct_within_budget_and_balanced(space):
    design = sobol_design(space, 32, seed=0)
    assert len({json.dumps(p, sort_keys=True) for p in design}) == 32
    assert all(check_budget(space, space.fixed_config(p).peft)[0] for p in design)
    assert design == sobol_design(space, 32, seed=0) and design != sobol_design(space, 32, seed=1)
    on = [sum(p[f"use.{m}"] for p in design) for m in space.methods]
    assert min(on) >= 12 and max(on) <= 20  # each method on about half the time (random draws spread wider)
    assert sobol_design(space, 4, seed=0, skip=2) == design[2:6]


def test_config_at_reads_every_dimension(space):
    dims = dimensions(space)
    assert "use.lora_X" in dims and "lora_X.rank" in dims and "recipe.lr" in dims
    cfg = config_at(space, dict.fromkeys(dims, 0.99))
    assert cfg.params["lora_X.rank"] == 16 and cfg.params["recipe.lr"] == pytest.approx(1e-2, rel=0.05)
    assert all(cfg.params[n] is True for n in dims if n.startswith("use."))


def test_design_refuses_a_budget_no_point_meets(space):
    import dataclasses

    tight = dataclasses.replace(space, budget=dataclasses.replace(space.budget, max_trainable=1))
    with pytest.raises(ConfigError, match="budget: only 0 of"):
        sobol_design(tight, 2, within=lambda methods: False)


def _synthetic(params: dict) -> float:
    """A landscape with a known best: lora_X and additional_scan help, a high lr helps, the rest is noise-free."""
    lr = params.get("recipe.lr", 3e-3)
    return 0.4 + 0.1 * params.get("use.lora_X", False) + 0.1 * params.get("use.additional_scan", False) \
        + 0.05 * np.log10(lr / 1e-3)


@pytest.fixture(scope="module")
def table(space) -> Table:
    configs = list(space.baseline_params().items()) + [("design", p) for p in sobol_design(space, 40, seed=5)]
    rows = []
    rng = np.random.default_rng(0)
    for i, (role, params) in enumerate(configs):
        mean = _synthetic(params)
        runs = [{"seed": 2 * i + k, "curve": [round(float(np.clip(mean + 0.02 * rng.standard_normal(), 0, 1)), 4)
                                              for _ in range(9)], "seconds": 1.0} for k in range(2)]
        trainable = check_budget(space, space.fixed_config(params).peft)[1]["trainable"]
        rows.append({"config": i, "role": role, "params": params, "trainable": trainable, "runs": runs})
    return Table(rows, {"configuration_space": configuration_space(space)})


def test_counter_matches_exact_counts(space, table):
    counter = Counter(space)
    for c in table.configs:
        assert counter.trainable(space.fixed_config(c["params"]).peft.to_dict()["methods"]) == c["trainable"]


def test_table_objective_answers_hits_and_others(space, table):
    obj = TableObjective(table, space, trees=50)
    hit = table.configs[3]
    assert obj.curve(hit["params"], 0) == hit["runs"][0]["curve"] and obj.curve(hit["params"], 1) == \
        hit["runs"][1]["curve"]
    other = dict(hit["params"], **{"recipe.lr": 0.0071})
    a, b = obj.curve(other, 0), obj.curve(other, 1)
    assert len(a) == 9 and all(0 <= v <= 1 for v in a) and a != b and a == obj.curve(other, 0)
    # the surrogate ranks the landscape: the best corner above the worst
    best = config_at(space, {n: 0.99 if n in ("use.lora_X", "use.additional_scan", "recipe.lr") else 0.0
                             for n in dimensions(space)}).params
    worst = config_at(space, dict.fromkeys(dimensions(space), 0.0)).params
    assert obj.score(obj.mean_curve(best).tolist()) > obj.score(obj.mean_curve(worst).tolist()) + 0.1
    assert score_of([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], 3) == pytest.approx(0.6)


def test_table_of_another_space_is_refused(tmp_path, space, table):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"configuration_space": {"model": "other"}, "configs": table.configs}))
    with pytest.raises(ConfigError, match="recorded on another configuration space"):
        Table.load(path, space)
    path.write_text(json.dumps({"configuration_space": configuration_space(space), "configs": table.configs}))
    assert len(Table.load(path, space).configs) == len(table.configs)


def test_simulate_runs_the_start_up_budget_pruner_and_final(space, table):
    import dataclasses

    obj = TableObjective(table, space, trees=50)
    space = dataclasses.replace(space, baselines=True, baselines_last=False, startup=None)  # baselines first
    sim = simulate(space, obj, budget=200, seed=0)
    search = [e for e in sim.events if e.final_of is None]
    assert [e.baseline for e in search[:12]] == list(space.baseline_params())  # baselines first, as queued
    assert all(e.state == "COMPLETE" for e in search[:12])  # never pruned
    assert search[-1].spent >= 200 and search[-2].spent < 200  # the trial that crosses the budget finishes
    assert any(e.state == "PRUNED" for e in search)  # successive halving stops weak sampled trials
    assert sim.search_compute == search[-1].spent and sim.final_compute == 0
    # the same with final: the top 2 again, their compute counted apart
    from hybridsearch.search.space.schema import FinalSpec

    fin = simulate(dataclasses.replace(space, final=FinalSpec(2, 3)), obj, budget=200, seed=0)
    finals = [e for e in fin.events if e.final_of is not None]
    assert len(finals) == 4 and fin.final_compute == 4 * 9 and all(e.state == "COMPLETE" for e in finals)
    assert fin.winner in {e.final_of for e in finals} and fin.winner_expected is not None
    again = simulate(space, obj, budget=200, seed=0)
    assert [(e.number, e.value) for e in again.events] == [(e.number, e.value) for e in sim.events]


def test_simulated_tpe_beats_random_on_a_clear_landscape(space, table):
    """Sanity of the whole loop: on a landscape with a clear slope, TPE's best after 30 trials is higher."""
    import dataclasses

    from hybridsearch.search.space.schema import PrunerSpec, SamplerSpec

    obj = TableObjective(table, space, trees=50)
    plain = dataclasses.replace(space, baselines=False, pruner=PrunerSpec("none", {}))
    rnd = dataclasses.replace(plain, sampler=SamplerSpec("random", 0, {}))
    finals = {"random": [], "tpe": []}
    for seed in range(4):
        for name, s in (("random", rnd), ("tpe", plain)):
            sim = simulate(s, obj, budget=30 * 9, seed=seed)
            finals[name].append(max(e.value for e in sim.events if e.value is not None))
    assert statistics.fmean(finals["tpe"]) > statistics.fmean(finals["random"])


def test_fast_forest_walk_equals_sklearn(space, table):
    obj = TableObjective(table, space, trees=30)
    X = np.random.default_rng(1).uniform(-1, 1, size=(20, len(obj.dims)))
    assert np.allclose(np.array([obj._trees.predict(x) for x in X]), obj.forest.predict(X))


def test_simulate_keeps_the_share_of_last_baselines_then_extends(space, table):
    import dataclasses

    from hybridsearch.search.space.schema import StartupSpec

    obj = TableObjective(table, space, trees=30)
    last = dataclasses.replace(space, baselines=True, baselines_last=True, startup=StartupSpec(4))
    sim = simulate(last, obj, budget=200, seed=0, extend_to=320)
    kinds = ["b" if e.baseline else "s" for e in sim.events]
    first, end = kinds.index("b"), len(kinds) - kinds[::-1].index("b")
    assert end - first == 12 and set(kinds[first:end]) == {"b"}  # the twelve baselines in one block
    assert sim.events[first - 2].spent < 200 - 12 * 9 <= sim.events[first - 1].spent  # their share kept
    assert sim.events[end - 1].spent == sim.search_compute and sim.events[-1].spent >= 320  # then extended
    assert sim.winner is not None and sim.winner < sim.events[end].number  # the winner of the run as shipped
