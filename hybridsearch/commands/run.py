"""``hybridsearch run --space S``: search the best hybrid PEFT configuration."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
from pathlib import Path

from ..display import printable
from ..errors import ConfigError
from ..search.run import ENGINES
from ._common import add_storage

ENGINE_NAMES = tuple(ENGINES.names())

NAME = "run"
HELP = "run (or continue) a search over a YAML search space"


def add_run_options(p: argparse.ArgumentParser) -> None:
    from ..search.ray_engine import RayOptions

    ray = RayOptions()
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
    p.add_argument("--json", action="store_true",
                   help="print one JSON document on stdout at the end (each study's summary and leaderboard file); "
                        "progress and tables go to stderr")
    p.add_argument("--engine", choices=ENGINE_NAMES, default="optuna",
                   help="optuna: worker processes on this machine; ray: trials as Ray tasks (docs/engines.md)")
    g = p.add_argument_group("--engine ray")
    g.add_argument("--address", default=ray.address,
                   help="Ray cluster to join: auto or HOST:PORT (default: start a local Ray, stop it at the end)")
    g.add_argument("--cpus-per-trial", type=float, default=ray.cpus_per_trial,
                   help=f"CPUs reserved per trial (default {ray.cpus_per_trial:g})")
    g.add_argument("--gpus-per-trial", type=float, default=ray.gpus_per_trial,
                   help="GPUs per trial; a fraction packs trials on one GPU, e.g. 0.25 "
                        f"(default {ray.gpus_per_trial:g})")
    g.add_argument("--max-concurrent", type=int, default=ray.max_concurrent,
                   help="trials at once (default: as many as the cluster's CPUs/GPUs hold)")
    g.add_argument("--max-retries", type=int, default=ray.max_retries,
                   help=f"resubmit a trial whose worker or node died up to N times (default {ray.max_retries})")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, help="bundled space name (mini_vtab, vim_vtab, ...) or a YAML path")
    p.add_argument("--study", default=None, help="study name (default: the space's name)")
    p.add_argument("--warm-start", metavar="STUDY", default=None,
                   help="a new study starts from the best configurations of STUDY, a finished study of the same "
                        "storage (e.g. the same space on another task) that this space can run")
    add_run_options(p)


def default_workers(workers: int | None) -> int:
    """--workers, else $HYBRIDSEARCH_WORKERS, else one per usable CPU core (at most 8)."""
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
            chosen: list[str] | None = None, preflight: bool = False, single: str | None = None) -> int:
    """Run the study (every stage of a staged space) with the command line's options; print each study's
    leaderboard and write it to ``--out`` (default runs/STUDY) as it ends."""
    import optuna

    from ..search import RunOptions, run_options

    devices = args.devices.split(",") if args.devices else None
    opts = RunOptions(study=study_name, storage=args.storage, space_ref=space_ref, trials=args.trials,
                      workers=len(devices) if devices else default_workers(args.workers), timeout=args.timeout,
                      seed=args.seed, data_root=args.data_root, devices=devices, stage=stage, chosen=chosen,
                      warm_start=getattr(args, "warm_start", None), single=single)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opts.validate()
    _check_out(_out(args, study_name))  # before the search, not after it ran
    studies: list[dict] = []
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    run_options(opts, engine=args.engine, engine_options=_ray_options(args), preflight=preflight,
                monitor=lambda _: _Progress(stderr=args.json), log=log,
                on_study=lambda study: studies.append(_report(args, study)))
    if args.json:
        print(json.dumps({"studies": studies}, indent=2, default=str))
    return 0


def _out(args: argparse.Namespace, study: str) -> Path:
    from ..search.study import folder_name

    return args.out or Path("runs") / folder_name(study)


def _check_out(out: Path) -> None:
    """``--out`` must be a folder this process can write (created if missing)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder for the leaderboard and the winner")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create it ({e.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: not writable")


def _report(args: argparse.Namespace, study) -> dict:
    """Print the study's leaderboard, write leaderboard.json; returns the study's entry of ``--json``."""
    from ..search.results import arm_studies, leaderboard, summary
    from ..search.study import finished, study_target
    from ._leaderboard import render

    render(study, stderr=args.json)
    out = _out(args, study.study_name)
    out.mkdir(parents=True, exist_ok=True)
    board = out / "leaderboard.json"
    s = summary(study, arm_studies(study))
    board.write_text(json.dumps({"summary": s, "trials": leaderboard(study)}, indent=2, default=str) + "\n")
    target = study_target(study)
    print(f"{finished(study)}/{target} trials finished; leaderboard in {board}; export the winner with: "
          f"hybridsearch export {study.study_name} --out {out / 'winner'}", file=sys.stderr if args.json else None)
    return {"study": study.study_name, "finished": finished(study), "target": target, "leaderboard": str(board),
            "summary": s}


def _ray_options(args: argparse.Namespace):
    """``RayOptions`` from the command line for ``--engine ray``; None otherwise (where a Ray option is an error)."""
    from ..search.ray_engine import RayOptions

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RayOptions) if hasattr(args, f.name)}
    if args.engine != "ray":
        defaults = RayOptions()
        used = [f"--{k.replace('_', '-')}" for k, v in given.items() if v != getattr(defaults, k)]
        if used:
            raise ConfigError(f"{', '.join(used)} only apply with --engine ray")
        return None
    if args.devices or args.workers is not None:
        raise ConfigError("--engine ray: use --max-concurrent and --gpus-per-trial instead of --workers / --devices")
    return RayOptions(**given)


def run(args: argparse.Namespace) -> int:
    from ..search.space import load_space

    space = load_space(args.space)  # validates before anything is written
    space_ref = args.space if not Path(args.space).exists() else str(Path(args.space).resolve())
    # preflight (budget, checkpoint, data, devices): a bad start creates no study
    return execute(args, space_ref, args.study or space.name, preflight=True)


class _Progress:
    """A rich progress bar (trials finished of the target, best score so far, time left) and one line per
    finished trial, whichever worker ran it, so a log of a run without a terminal still tells its story."""

    def __init__(self, stderr: bool = False) -> None:
        self.stderr = stderr

    def __enter__(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from ..display import console

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console(self.stderr))
        self.progress.__enter__()
        self.task = self.progress.add_task("search", total=None)
        self.started = datetime.datetime.now()  # trials of a resumed study finished before this are not news
        self.shown: set[int] = set()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def poll(self, study) -> None:
        from ..search.results import best_trials
        from ..search.study import finished, study_target

        trials = study.get_trials(deepcopy=False)
        news = [t for t in trials if t.state.is_finished() and t.number not in self.shown
                and (t.datetime_complete is None or t.datetime_complete >= self.started)]
        for t in sorted(news, key=lambda t: t.number):
            self.shown.add(t.number)
            self._line(t)
        best = best_trials(study)
        desc = f"best {best[0].values[0]:.4f} (#{best[0].number})" if best else "search"
        self.progress.update(self.task, completed=finished(study), total=study_target(study),
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
        line = (f"trial {r['number']}: {r['state']} {value} [{', '.join(r['methods']) or '-'}] "
                f"trainable={trainable}{seconds} {note}".rstrip())
        self.progress.console.print(printable(line), markup=False, highlight=False, soft_wrap=True)
