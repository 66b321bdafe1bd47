"""The mini-VTAB cache: one verified build per seed (and task list / sizes) under the data directory.

``ensure_mini_vtab`` builds on first use into ``$HYBRIDSEARCH_DATA_DIR`` (default ``~/.cache/hybridsearch``)
as ``mini_vtab-v<version>-seed<seed>``. It builds in a temporary sibling folder and renames it into place,
under a file lock, so a crash never leaves a half-built cache and two workers calling it at once both get the
same complete folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from ...errors import DataError
from .build import DEFAULT_SEED, build_mini_vtab, check_seed
from .manifest import BUILDER_VERSION, verify_mini_vtab
from .tasks import N_TEST, N_TRAIN, N_VAL, resolve_tasks


def data_dir() -> Path:
    """Root of all hybridsearch data caches: $HYBRIDSEARCH_DATA_DIR or ~/.cache/hybridsearch."""
    env = os.environ.get("HYBRIDSEARCH_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hybridsearch"


def mini_vtab_path(
    seed: int = DEFAULT_SEED,
    *,
    tasks: Sequence[str] | None = None,
    n_train: int = N_TRAIN,
    n_val: int = N_VAL,
    n_test: int = N_TEST,
) -> Path:
    """Cache folder of a build; non-default task lists or sizes get a short config hash suffix."""
    name = f"mini_vtab-v{BUILDER_VERSION}-seed{check_seed(seed)}"
    names = [t.name for t in resolve_tasks(tasks)]
    every = [t.name for t in resolve_tasks(None)]
    if names != every or (n_train, n_val, n_test) != (N_TRAIN, N_VAL, N_TEST):
        cfg = json.dumps([names, n_train, n_val, n_test]).encode()
        name += "-" + hashlib.sha256(cfg).hexdigest()[:8]
    return data_dir() / name


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock so concurrent workers build once; the atomic rename stays the safety net."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")  # noqa: SIM115 (closed below; the errors are told apart first)
    except IsADirectoryError:
        raise DataError(f"lock file {path} is a folder; remove it (mini-VTAB builds lock on this file)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot create the mini-VTAB lock file ({e.strerror or type(e).__name__}); "
                        "check $HYBRIDSEARCH_DATA_DIR") from None
    with fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, the rename race is still safe
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_mini_vtab(
    seed: int = DEFAULT_SEED,
    *,
    tasks: Sequence[str] | None = None,
    n_train: int = N_TRAIN,
    n_val: int = N_VAL,
    n_test: int = N_TEST,
) -> Path:
    """Path of a verified mini-VTAB build in the cache, building it first if it is missing or broken."""
    dest = mini_vtab_path(seed, tasks=tasks, n_train=n_train, n_val=n_val, n_test=n_test)
    if dest.is_dir() and not verify_mini_vtab(dest):
        return dest
    with _file_lock(dest.parent / f".{dest.name}.lock"):
        if dest.is_dir():
            if not verify_mini_vtab(dest):
                return dest  # another worker built it while we waited
            broken = dest.with_name(f".{dest.name}.broken-{os.getpid()}")
            try:
                os.rename(dest, broken)
            except OSError as e:
                raise DataError(f"{dest}: a broken mini-VTAB cache that cannot be moved aside "
                                f"({e.strerror or type(e).__name__}); remove it") from None
            shutil.rmtree(broken, ignore_errors=True)
        try:
            build_mini_vtab(dest, seed, tasks=tasks, n_train=n_train, n_val=n_val, n_test=n_test)
        except (OSError, DataError):
            if not dest.is_dir():  # a lock-less platform lost the rename race: fine if the winner is sound
                raise
    problems = verify_mini_vtab(dest)
    if problems:
        raise DataError(f"mini-VTAB cache {dest} failed verification: " + "; ".join(problems[:3]))
    return dest
