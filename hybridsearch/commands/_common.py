"""Options shared by the study commands."""

from __future__ import annotations

import argparse

from ..search.storage import DEFAULT_STORAGE


def add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=None,
                   help=f"study storage: a journal file path (default {DEFAULT_STORAGE}), sqlite:///FILE, "
                        "postgresql://USER@HOST/DB")


def load_study(name: str, storage: str | None):
    import optuna

    from ..errors import StorageError
    from ..search.storage import mask_url, open_storage, storage_faults

    with storage_faults(storage):
        try:
            return optuna.load_study(study_name=name, storage=open_storage(storage))
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(storage))]
            raise StorageError(f"no study {name!r} in {mask_url(storage)}; studies there: "
                               f"{', '.join(names) or 'none'}") from None
