"""``hybridsearch run --space S``: search the best hybrid PEFT configuration."""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

from ._common import add_storage

NAME = "run"
HELP = "run (or continue) a search over a YAML search space"


def add_run_options(p: argparse.ArgumentParser) -> None:
    add_storage(p)
    p.add_argument("--trials", type=int, default=None, help="target number of finished trials (stored with the study)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes sharing the study (default: $HYBRIDSEARCH_WORKERS, else one per CPU core "
                        "up to 8, each with one thread: small proxy trials scale by processes, not threads)")
    p.add_argument("--devices", default=None, help="GPUs, one worker each, e.g. 0,1,2,3 (repeat an id to pack two)")
    p.add_argument("--timeout", type=float, default=None, help="stop starting new trials after this many seconds")
    p.add_argument("--seed", type=int, default=None, help="sampler and training seed (default 0)")
    p.add_argument("--data-root", default=None, help="dataset root (VTAB-1k folder or commonsense files)")
    p.add_argument("--out", type=Path, default=None, help="folder for the leaderboard and winner (default runs/STUDY)")
    p.add_argument("--engine", choices=("optuna", "ray"), default="optuna",
                   help="optuna: worker processes on this machine; ray: trials as Ray tasks (docs/ray.md)")
    g = p.add_argument_group("--engine ray")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join: auto or HOST:PORT (default: start a local Ray, stop it at the end)")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs reserved per trial (default 1)")
    g.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial; a fraction packs trials on one GPU, e.g. 0.25 (default 0)")
    g.add_argument("--max-concurrent", type=int, default=None,
                   help="trials at once (default: as many as the cluster's CPUs/GPUs hold)")
    g.add_argument("--max-retries", type=int, default=2,
                   help="resubmit a trial whose worker or node died up to N times (default 2)")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, help="bundled space name (mini_vtab, vim_vtab, ...) or a YAML path")
    p.add_argument("--study", default=None, help="study name (default: the space's name)")
    add_run_options(p)


def default_workers(workers: int | None) -> int:
    """--workers, else $HYBRIDSEARCH_WORKERS, else one per usable CPU core (at most 8)."""
    from ..errors import ConfigError

    if workers is None and (env := os.environ.get("HYBRIDSEARCH_WORKERS")):
        if not env.isdigit():
            raise ConfigError(f"HYBRIDSEARCH_WORKERS={env!r}: must be a positive integer")
        workers = int(env)
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(8, cores))
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    return workers


def execute(args: argparse.Namespace, space_ref: str, study_name: str, stage: int | None = None,
            chosen: list[str] | None = None) -> int:
    """Run one study, or every stage of a staged space in turn (stage k+1 tunes stage k's chosen methods)."""
    from ..errors import HybridSearchError
    from ..search.results import best_trials
    from ..search.space import load_space

    space = load_space(space_ref)
    if stage is not None or not space.stages:
        _run_one(args, space_ref, study_name, stage, chosen, args.trials)
        return 0
    for k, st in enumerate(space.stages, 1):
        name = f"{study_name}.{st.name or f'stage{k}'}"
        print(f"stage {k}/{len(space.stages)}: study {name}" + (f", methods {', '.join(chosen)}" if chosen else ""))
        study = _run_one(args, space_ref, name, k, chosen, args.trials or st.trials)
        best = best_trials(study)
        if not best:
            raise HybridSearchError(f"stage {k} ({name}) finished without a completed trial; "
                                    f"see hybridsearch show {name}")
        chosen = space.stage_space(k, chosen).selected_methods(best[0].params)
    return 0


def _run_one(args: argparse.Namespace, space_ref: str, study_name: str, stage: int | None,
             chosen: list[str] | None, trials: int | None):
    import optuna

    from ..search.engine import RunOptions, finished, run_study
    from ..search.results import leaderboard, render, summary

    devices = args.devices.split(",") if args.devices else None
    workers = len(devices) if devices else default_workers(args.workers)
    opts = RunOptions(study=study_name, storage=args.storage, space_ref=space_ref, trials=trials,
                      workers=workers, timeout=args.timeout, seed=args.seed, data_root=args.data_root,
                      devices=devices, stage=stage, chosen=chosen)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _Progress() as prog:
        if getattr(args, "engine", "optuna") == "ray":
            study = _run_ray(args, opts, prog)
        else:
            _no_ray_options(args)
            study = run_study(opts, on_trial=prog.on_trial, poll=prog.poll)
        prog.poll(study)
    render(study)
    out = args.out or Path("runs") / study_name.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    (out / "leaderboard.json").write_text(
        json.dumps({"summary": summary(study), "trials": leaderboard(study)}, indent=2, default=str) + "\n")
    target = study.user_attrs.get("target_trials")
    print(f"{finished(study)}/{target} trials finished; leaderboard in {out / 'leaderboard.json'}; "
          f"export the winner with: hybridsearch export {study_name} --out {out / 'winner'}")
    return study


_RAY_DEFAULTS = {"address": None, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0, "max_concurrent": None,
                 "max_retries": 2}


def _no_ray_options(args: argparse.Namespace) -> None:
    from ..errors import ConfigError

    used = [f"--{k.replace('_', '-')}" for k, v in _RAY_DEFAULTS.items() if getattr(args, k, v) != v]
    if used:
        raise ConfigError(f"{', '.join(used)} only apply with --engine ray")


def _run_ray(args: argparse.Namespace, opts, prog):
    from ..errors import ConfigError
    from ..search.ray_engine import RayOptions, run_ray_study

    if args.devices or args.workers is not None:
        raise ConfigError("--engine ray: use --max-concurrent and --gpus-per-trial instead of --workers / --devices")
    ro = RayOptions(**{k: getattr(args, k) for k in _RAY_DEFAULTS})
    return run_ray_study(opts, ro, on_trial=prog.on_trial, poll=prog.poll)


def run(args: argparse.Namespace) -> int:
    from ..search.preflight import preflight
    from ..search.space import load_space

    space = load_space(args.space)  # validates before anything is written
    devices = args.devices.split(",") if args.devices else None
    preflight(space, args.data_root, devices)  # budget, checkpoint, data, devices: a bad start creates no study
    return execute(args, args.space if not Path(args.space).exists() else str(Path(args.space).resolve()),
                   args.study or space.name)


class _Progress:
    """A rich progress bar (trials finished of the target, best score so far, time left) and one line per
    finished trial, whichever worker ran it, so a log of a run without a terminal still tells its story."""

    def __enter__(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn())
        self.progress.__enter__()
        self.task = self.progress.add_task("search", total=None)
        self.started = datetime.datetime.now()  # trials of a resumed study finished before this are not news
        self.shown: set[int] = set()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def poll(self, study) -> None:
        from ..search.engine import finished
        from ..search.results import best_trials

        trials = study.get_trials(deepcopy=False)
        news = [t for t in trials if t.state.is_finished() and t.number not in self.shown
                and (t.datetime_complete is None or t.datetime_complete >= self.started)]
        for t in sorted(news, key=lambda t: t.number):
            self.shown.add(t.number)
            self._line(t)
        best = best_trials(study)
        desc = f"best {best[0].values[0]:.4f} (#{best[0].number})" if best else "search"
        self.progress.update(self.task, completed=finished(study), total=study.user_attrs.get("target_trials"),
                             description=desc)

    def on_trial(self, study, trial) -> None:
        self.poll(study)

    def _line(self, trial) -> None:
        from ..search.results import trial_row

        r = trial_row(trial)
        value = "-" if r["score"] is None else f"{r['score']:.4f}"
        seconds = "" if r["seconds"] is None else f" {r['seconds']:.0f}s"
        trainable = "-" if r["trainable"] is None else f"{r['trainable']:,}"
        note = r["failure"] or (f"baseline {r['baseline']}" if r["baseline"] else "")
        self.progress.console.print(f"trial {r['number']}: {r['state']} {value} [{', '.join(r['methods']) or '-'}] "
                                    f"trainable={trainable}{seconds} {note}".rstrip(),
                                    markup=False, highlight=False, soft_wrap=True)
