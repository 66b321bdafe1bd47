"""Searching on a recorded table instead of training, so an engine setting can be run a hundred times in
seconds (benchmarks/bench_search_table.py):

* ``Table``: a recorded benchmark (benchmarks/search_table/table.json): configurations of one space, each with
  its exact trainable count and, per seed, the validation accuracy after every epoch of every task.
* ``TableObjective``: answers any configuration of the space. A configuration of the table gets one of its
  recorded runs; any other the mean curve a surrogate fitted on the table predicts (a random forest over the
  unit-cube position of every value) plus a seed-to-seed deviation of the table, a whole curve at a time, so
  the noise keeps its size and its correlation across epochs.
* ``simulate``: one search as the engine runs it (the start-up queue of ``startup.queue_startup``, a sampler
  seeded per trial number by ``study.next_trial``, the space's pruner asked after every epoch, baselines never
  pruned), with one worker on an in-memory study, until a compute budget in epochs is spent.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from ..errors import ConfigError
from .space import SearchSpace, count_methods
from .space.design import dimensions
from .space.schema import canonical_json
from .startup import queue_last_baselines, queue_startup
from .study import next_trial

_SECTIONS = ("model", "data", "objectives", "budget", "fidelity", "recipe", "methods")


def configuration_space(space: SearchSpace) -> dict[str, Any]:
    """What a trial may be and how it is scored: the sections a table and a space must share (not the
    sampler, pruner, trials or start-up, which are what a simulation varies)."""
    d = space.to_dict()
    return json.loads(canonical_json({k: d[k] for k in _SECTIONS}))


@dataclass
class Table:
    configs: list[dict[str, Any]]  # {"params", "trainable", "runs": [{"seed", "curve", "seconds"}], "role"}
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace | None = None) -> Table:
        """Read a table; with ``space``, refuse one recorded on another configuration space."""
        data = json.loads(Path(path).read_text())
        table = cls([c for c in data["configs"] if c["runs"]], {k: v for k, v in data.items() if k != "configs"})
        if space is not None and json.loads(canonical_json(data.get("configuration_space"))) != \
                configuration_space(space):
            raise ConfigError(f"{path}: recorded on another configuration space than {space.source} (model, data, "
                              f"budget, fidelity, recipe or methods differ); rebuild it: "
                              f"python benchmarks/build_search_table.py")
        return table


def score_of(curve: list[float], epochs: int) -> float:
    """A trial's value from its curve: the mean over the tasks of the last epoch's accuracy (the objective's)."""
    finals = curve[epochs - 1::epochs]
    return sum(finals) / len(finals)


class Counter:
    """Exact trainable counts of sampled configurations, fast: the head plus each method's own count, cached
    per method and settings without their float values (scales, multipliers and rates change no shape; the
    tests check the sum against every exact count of the table)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.head = count_methods(space, {})["trainable"]
        self._own: dict[str, int] = {}

    def trainable(self, methods: dict[str, dict[str, Any]]) -> int:
        total = self.head
        for name, settings in methods.items():
            key = canonical_json([name, {k: v for k, v in settings.items() if not isinstance(v, float)}])
            if key not in self._own:
                self._own[key] = count_methods(self.space, {name: settings})["trainable"] - self.head
            total += self._own[key]
        return total

    def within(self, methods: dict[str, dict[str, Any]]) -> bool:
        b = self.space.budget
        n = self.trainable(methods) - (0 if b.include_head else self.head)
        return (b.max_trainable is None or n <= b.max_trainable) and (b.min_trainable is None or n >= b.min_trainable)


class TableObjective:
    """Curves for any configuration of ``space`` from ``table`` (see the module docstring)."""

    def __init__(self, table: Table, space: SearchSpace, trees: int = 200, seed: int = 0) -> None:
        from sklearn.ensemble import RandomForestRegressor

        self.space, self.table = space, table
        self.dims = dimensions(space)
        self.epochs = space.fidelity.epochs
        self.by_key = {canonical_json(c["params"]): c for c in table.configs}
        X = np.array([self.features(c["params"]) for c in table.configs])
        curves = [np.array([r["curve"] for r in c["runs"]]) for c in table.configs]
        Y = np.array([c.mean(axis=0) for c in curves])
        # a run's deviation from its configuration's mean, scaled back to one seed's spread (S runs: x sqrt(S/(S-1)))
        self.deviations = np.concatenate([(c - c.mean(axis=0)) * math.sqrt(len(c) / (len(c) - 1))
                                          for c in curves if len(c) > 1]) if any(len(c) > 1 for c in curves) \
            else np.zeros((1, Y.shape[1]))
        self.forest = RandomForestRegressor(n_estimators=trees, min_samples_leaf=2, max_features=0.5,
                                            random_state=seed, n_jobs=1).fit(X, Y)
        self._trees = _Trees(self.forest)
        self.counter = Counter(space)
        self._mean: dict[str, np.ndarray] = {}

    def features(self, params: dict[str, Any]) -> list[float]:
        """Each value's position in [0, 1]; -1 for a value the configuration does not have (a method off)."""
        return [p.to_unit(params[n]) if n in params else -1.0 for n, p in self.dims.items()]

    def mean_curve(self, params: dict[str, Any]) -> np.ndarray:
        """The expected curve: the table's mean over seeds for a configuration of the table, else the forest's."""
        key = canonical_json(params)
        if key not in self._mean:
            hit = self.by_key.get(key)
            self._mean[key] = (np.array([r["curve"] for r in hit["runs"]]).mean(axis=0) if hit is not None
                               else self._trees.predict(np.array(self.features(params))))
        return self._mean[key]

    def curve(self, params: dict[str, Any], seed: int) -> list[float]:
        """One training run with ``seed``: a recorded run of a table configuration (``seed`` picks which), else
        the surrogate's mean plus a recorded deviation that ``seed`` picks."""
        hit = self.by_key.get(canonical_json(params))
        if hit is not None:
            return list(hit["runs"][seed % len(hit["runs"])]["curve"])
        dev = self.deviations[np.random.default_rng([seed, 7919]).integers(len(self.deviations))]
        return np.clip(self.mean_curve(params) + dev, 0.0, 1.0).tolist()

    def score(self, curve: list[float]) -> float:
        return score_of(curve, self.epochs)


class _Trees:
    """The forest's trees as padded arrays, walked together for one configuration: the same prediction as
    ``forest.predict`` in a fraction of a millisecond (sklearn's per-call overhead is ~35 ms: most of a
    simulated trial)."""

    def __init__(self, forest: Any) -> None:
        trees = [e.tree_ for e in forest.estimators_]
        n = max(t.node_count for t in trees)

        def pad(get: Any, fill: float) -> np.ndarray:
            out = np.full((len(trees), n) + get(trees[0]).shape[1:], fill, dtype=float)
            for i, t in enumerate(trees):
                out[i, : t.node_count] = get(t)
            return out

        self.left = pad(lambda t: t.children_left, -1).astype(int)
        self.right = pad(lambda t: t.children_right, -1).astype(int)
        self.feature = pad(lambda t: t.feature, 0).astype(int)
        self.threshold = pad(lambda t: t.threshold, 0.0)
        self.value = pad(lambda t: t.value[:, :, 0], 0.0)  # (trees, nodes, outputs)
        self.rows = np.arange(len(trees))

    def predict(self, x: np.ndarray) -> np.ndarray:
        node = np.zeros(len(self.rows), dtype=int)
        while True:
            left = self.left[self.rows, node]
            inner = left >= 0
            if not inner.any():
                return self.value[self.rows, node].mean(axis=0)
            go_left = x[self.feature[self.rows, node]] <= self.threshold[self.rows, node]
            node = np.where(inner, np.where(go_left, left, self.right[self.rows, node]), node)


@dataclass
class Event:
    """One finished trial of a simulated search: ``spent`` is the compute (epochs) used once it ended."""

    number: int
    state: str
    value: float | None
    spent: int
    baseline: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    final_of: int | None = None


@dataclass
class Simulation:
    """A simulated search: its trials in the order they ended (the ``final`` re-trainings last), the winner
    ``results.best_trials`` picks and the winner's expected score (the mean curve's, free of seed noise)."""

    events: list[Event]
    winner: int | None
    winner_expected: float | None
    search_compute: int
    final_compute: int


def simulate(space: SearchSpace, objective: TableObjective, budget: int, seed: int = 0,
             max_trials: int = 10_000, extend_to: int = 0) -> Simulation:
    """One search of ``space`` with sampler seed ``seed`` on ``objective`` until ``budget`` epochs are spent
    (the trial that crosses it finishes; ``baselines: last`` keep their share of it for the end), then its
    ``final`` re-trainings; trial n trains with seed ``seed`` + n as in a real study. ``extend_to``: then go on
    sampling until that compute, as a resumed study with more trials would (the winner is the one at the end of
    ``budget``)."""
    from .final import queue_final
    from .results import best_trials

    if len(space.directions) > 1:
        raise ConfigError(f"{space.source}: objectives: the simulator scores one objective (accuracy)")
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), sampler=space.make_sampler(seed),
                                pruner=space.make_pruner(), directions=space.directions)
    queue_startup(study, space, seed, within=objective.counter.within)
    events: list[Event] = []
    spent = 0
    # baselines: last keeps their compute (full fidelity, never pruned) for after the search's own trials
    reserved = len(space.baseline_params()) * len(objective.table.configs[0]["runs"][0]["curve"]) \
        if space.baselines_last else 0
    while spent < budget - reserved and len(events) < max_trials:
        events.append(_trial(study, space, objective, seed, spent))
        spent = events[-1].spent
    for _ in range(queue_last_baselines(study, space)):
        events.append(_trial(study, space, objective, seed, spent))
        spent = events[-1].spent
    search = spent
    if space.final is not None:
        for _ in range(queue_final(study, space)):
            events.append(_trial(study, space, objective, seed, spent))
            spent = events[-1].spent
    best = best_trials(study)
    winner = best[0] if best else None
    expected = objective.score(objective.mean_curve(winner.params).tolist()) if winner else None
    final = spent - search
    while spent < extend_to and len(events) < max_trials:
        events.append(_trial(study, space, objective, seed, spent))
        spent = events[-1].spent
    return Simulation(events, winner.number if winner else None, expected, search, final)


def _trial(study: optuna.Study, space: SearchSpace, objective: TableObjective, seed: int, spent: int) -> Event:
    """Ask, 'train' from the table, report every epoch to the pruner, tell: what the engine's worker does."""
    trial = next_trial(study, space, seed)
    sampled = space.sample(trial)
    params, methods = sampled.params, sampled.peft.to_dict()["methods"]
    baseline, final_of = trial.user_attrs.get("baseline"), trial.user_attrs.get("final_of")
    if not objective.counter.within(methods):  # the objective prunes it before training: no compute
        study.tell(trial, state=TrialState.PRUNED)
        return Event(trial.number, "PRUNED", None, spent, baseline, params, final_of)
    curve = objective.curve(params, seed + trial.number)
    state = TrialState.COMPLETE
    for step, acc in enumerate(curve, 1):
        trial.report(acc, step)
        spent += 1
        # asked for a baseline too (successive halving records rung values only when asked), never obeyed
        if trial.should_prune() and baseline is None and final_of is None:
            state = TrialState.PRUNED
            break
    value = objective.score(curve) if state == TrialState.COMPLETE else None
    study.tell(trial, value, state=state)
    return Event(trial.number, state.name, value, spent, baseline, params, final_of)


def best_within(events: list[Event], compute: float) -> float | None:
    """The best value among the search trials completed within ``compute`` epochs."""
    done = [e.value for e in events if e.value is not None and e.spent <= compute and e.final_of is None]
    return max(done) if done else None


def compute_to_reach(events: list[Event], target: float) -> int | None:
    """The compute (epochs) at which a completed trial first scored at least ``target``; None: never."""
    return next((e.spent for e in events if e.value is not None and e.value >= target - 1e-12
                 and e.final_of is None), None)
