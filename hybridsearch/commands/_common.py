"""Options shared by the study commands."""

from __future__ import annotations

import argparse

from ..search.storage import DEFAULT_STORAGE, STORAGE_ENV


def add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=None,
                   help=f"study storage: a journal file path, sqlite:///FILE or postgresql://USER@HOST/DB "
                        f"(default: ${STORAGE_ENV}, else {DEFAULT_STORAGE})")


def load_study(name: str, storage: str | None):
    import optuna

    from ..errors import StorageError
    from ..search.storage import MissingStorage, mask_url, open_storage, storage_faults

    with storage_faults(storage):
        try:
            opened = open_storage(storage, create=False)  # a reader never creates a storage or a study
        except MissingStorage as e:
            raise StorageError(f"no study {name!r}: {e}") from None
        try:
            return optuna.load_study(study_name=name, storage=opened)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(opened)]
            raise StorageError(f"no study {name!r} in {mask_url(storage)}; studies there: "
                               f"{', '.join(names) or 'none'}") from None
