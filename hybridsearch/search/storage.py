"""Study storages: a journal file (the default: safe for many processes on one machine or a shared file
system), SQLite, or PostgreSQL / MySQL through SQLAlchemy URLs."""

from __future__ import annotations

from pathlib import Path

import optuna

from ..errors import StorageError

DEFAULT_STORAGE = "runs/hybridsearch.journal"
HEARTBEAT_S = 10
GRACE_S = 30


def open_storage(url: str | None) -> optuna.storages.BaseStorage:
    """``None`` -> ./runs/hybridsearch.journal; a path or ``journal:PATH`` -> JournalStorage;
    ``sqlite:///``, ``postgresql://``, ``mysql://`` -> RDBStorage. Dead workers are detected by the engine's
    own heartbeat attribute (engine.py), which works the same on every storage."""
    url = url or DEFAULT_STORAGE
    try:
        if "://" not in url:
            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(
                str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path))
            )
            return optuna.storages.JournalStorage(backend)
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # sqlite: wait on the file lock instead of failing under concurrent workers
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:  # unreachable server, bad URL, missing driver, unwritable path
        raise StorageError(f"cannot open storage {url!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
