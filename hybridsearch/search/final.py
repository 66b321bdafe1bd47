"""The end of a search with ``final: {top_k, seeds}``: its ``top_k`` configurations are trained again with other
seeds at the search's fidelity, as trials of the same study (queued with ``final_of``: the trial they repeat;
never pruned; trial n trains with seed t + n, so each re-training has its own seed). They run through the
engine like any queued trial (workers, Ray, resume after a crash), and ``results`` ranks by the mean over
seeds. A study that grows later (``resume --trials``) gets the re-trainings its new top configurations lack."""

from __future__ import annotations

from collections import Counter

import optuna
from optuna.trial import TrialState

from .results import is_final
from .space import SearchSpace
from .study import _live


def queue_final(study: optuna.Study, space: SearchSpace) -> int:
    """Queue the re-trainings the study's top ``final.top_k`` configurations (by their search score) still lack
    to have ``final.seeds`` seeds each; returns how many were queued. An attempt that failed on its own counts
    (it is not queued again); one lost to a crash is re-queued by ``recover_stale`` as any trial."""
    spec = space.final
    if spec is None:
        return 0
    live = _live(study.get_trials(deepcopy=False))
    done = [t for t in live if t.state == TrialState.COMPLETE and not is_final(t)]
    top = sorted(done, key=lambda t: (-t.values[0], t.number))[: spec.top_k]
    have = Counter(t.user_attrs["final_of"] for t in live if is_final(t))
    queued = 0
    for t in top:
        for _ in range(spec.seeds - 1 - have[t.number]):
            study.enqueue_trial(t.params, user_attrs={"final_of": t.number}, skip_if_exists=False)
            queued += 1
    return queued
