"""The public search API: ``run_search`` and ``resume_search`` return the ``optuna.Study`` (the last stage's for a
staged space), with Optuna-style callbacks for every finished trial from every worker, whichever engine ran it.

    import hybridsearch as hs
    study = hs.run_search("tiny_debug", storage="runs/demo.journal", trials=4,
                          callbacks=[lambda study, trial: print(trial.number, trial.values)])
    print(study.best_trials[0].params)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial

from ..errors import ConfigError
from .run import run_options
from .space import SearchSpace, load_space, space_from_dict
from .storage import default_storage, open_storage
from .study import FINISHED, RunOptions

Callback = Callable[[optuna.Study, FrozenTrial], None]
_log = logging.getLogger("hybridsearch")


class _Callbacks:
    """Calls each callback once for every trial that finishes while a study runs: the worker in this process
    tells it (``on_trial``), the driver of worker processes or of Ray finds it when it polls the storage."""

    def __init__(self, opts: RunOptions, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)
        self.seen = _finished_numbers(opts)  # finished before this run: not news

    def __enter__(self) -> _Callbacks:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def on_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._fire(study, [trial])

    def poll(self, study: optuna.Study) -> None:
        self._fire(study, study.get_trials(deepcopy=False, states=FINISHED))

    def _fire(self, study: optuna.Study, trials: Iterable[FrozenTrial]) -> None:
        for t in sorted(trials, key=lambda t: t.number):
            if t.state.is_finished() and t.number not in self.seen:
                self.seen.add(t.number)
                for cb in self.callbacks:
                    cb(study, t)


def _finished_numbers(opts: RunOptions) -> set[int]:
    with contextlib.suppress(KeyError):
        study = optuna.load_study(study_name=opts.study, storage=open_storage(opts.storage))
        return {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}
    return set()


def _space_ref(space: str | Path | SearchSpace | dict, storage: str | None, study: str | None) -> tuple[str, str]:
    """(what workers and ``resume`` load the space from, the default study name). A space given as a mapping or
    built in memory is written as YAML beside a file storage (or in runs/), so the study can be resumed."""
    if isinstance(space, (str, Path)):
        loaded = load_space(space)
        ref = str(Path(space).resolve()) if Path(space).is_file() else str(space)
        return ref, loaded.name
    if isinstance(space, dict):
        space = space_from_dict(space, source="<mapping>")
    if not isinstance(space, SearchSpace):
        raise ConfigError(f"space: a bundled name, a YAML path, a mapping or a SearchSpace, got "
                          f"{type(space).__name__}")
    if Path(space.source).is_file():
        return str(Path(space.source).resolve()), space.name
    url = storage or default_storage()
    folder = Path(url.removeprefix("journal:")).parent if "://" not in url else Path("runs")
    path = (folder / f"{study or space.name}.space.yaml").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    d = {**space.to_dict(), "name": space.name}
    if not d.get("description"):
        d.pop("description", None)
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return str(path), space.name


def run_search(space: str | Path | SearchSpace | dict, *, study: str | None = None, storage: str | None = None,
               trials: int | None = None, workers: int | None = None, seed: int | None = None,
               data_root: str | None = None, devices: Sequence[str] | None = None, timeout: float | None = None,
               engine: str = "optuna", engine_options: Any = None, callbacks: Sequence[Callback] = (),
               preflight: bool = True, warm_start: str | None = None) -> optuna.Study:
    """Create (or continue) a study of ``space`` and run it to its target number of finished trials.

    ``space``: a bundled name, a YAML path, a mapping in the YAML format or a ``SearchSpace``. ``study``: its name
    (default: the space's name; a staged space runs ``STUDY.<stage>`` studies). ``storage``: a journal path,
    ``sqlite:///FILE`` or a database URL (default ``$HYBRIDSEARCH_STORAGE``, else runs/hybridsearch.journal).
    ``workers``: processes on this machine (default 1: trials run in this process). ``engine``: ``optuna`` or
    ``ray`` (``engine_options``: ``search.ray_engine.RayOptions``). ``callbacks``: ``(study, trial)`` for every
    finished trial, from every worker. Bad input raises a ``HybridSearchError`` naming the key and what is
    allowed, before any study is created. ``warm_start``: a new study starts from the best configurations of
    that finished study of the same storage (``--warm-start``)."""
    ref, name = _space_ref(space, storage, study)
    opts = RunOptions(study=study or name, storage=storage, space_ref=ref, trials=trials, workers=workers or 1,
                      timeout=timeout, seed=seed, data_root=data_root, devices=list(devices) if devices else None,
                      warm_start=warm_start)
    return _run(opts, engine, engine_options, callbacks, preflight)


def resume_search(study: str, *, storage: str | None = None, trials: int | None = None, workers: int | None = None,
                  timeout: float | None = None, engine: str = "optuna", engine_options: Any = None,
                  callbacks: Sequence[Callback] = ()) -> optuna.Study:
    """Continue ``study`` (one stage's study for a staged space) after a crash or with a new target: its trials
    left running are re-queued, and it runs to its target. The space, seed and data come from the study."""
    from ..errors import StorageError
    from .storage import MissingStorage, mask_url

    try:
        attrs = optuna.load_study(study_name=study, storage=open_storage(storage, create=False)).user_attrs
    except MissingStorage as e:
        raise StorageError(f"no study {study!r}: {e}") from None
    except KeyError:
        raise StorageError(f"no study {study!r} in {mask_url(storage)}") from None
    opts = RunOptions(study=study, storage=storage, space_ref=attrs["space_ref"], trials=trials,
                      workers=workers or 1, timeout=timeout, data_root=attrs.get("data_root"),
                      stage=attrs.get("stage"), chosen=attrs.get("chosen"), single=attrs.get("single"))
    return _run(opts, engine, engine_options, callbacks, preflight=False)


def _run(opts: RunOptions, engine: str, engine_options: Any, callbacks: Sequence[Callback],
         preflight: bool) -> optuna.Study:
    monitor = (lambda o: _Callbacks(o, callbacks)) if callbacks else None
    return run_options(opts, engine=engine, engine_options=engine_options, preflight=preflight, monitor=monitor,
                       log=_log.info)
