"""Study storages: a journal file (the default: safe for many processes on one machine or a shared file
system), SQLite, or PostgreSQL / MySQL through SQLAlchemy URLs.

Crash safety beyond Optuna's defaults (a worker may be SIGKILLed at any instruction):
* journal: the lock is a POSIX record lock, which the kernel drops when its holder dies (Optuna's lock file
  would stall every other worker for 30 s), and a record torn by a kill mid-append is cut off before the next
  append (otherwise the next record is glued to it and the log no longer parses);
* SQLite: every transaction is ``BEGIN IMMEDIATE``, so Optuna's read-then-write steps (popping a queued trial,
  finishing a trial) are atomic across processes: no queued trial runs twice;
* PostgreSQL: ``postgresql://`` uses psycopg2 when psycopg 3 (SQLAlchemy 2.1's default driver) is absent.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import BaseJournalFileLock, get_lock_file  # the lock interface (no public name)

from ..errors import StorageError

DEFAULT_STORAGE = "runs/hybridsearch.journal"
STORAGE_ENV = "HYBRIDSEARCH_STORAGE"  # the default storage of every command, instead of DEFAULT_STORAGE


def default_storage() -> str:
    """``$HYBRIDSEARCH_STORAGE``, else ``runs/hybridsearch.journal`` (relative to the working folder)."""
    return os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
HEARTBEAT_S = 10
GRACE_S = 30

_THREAD_LOCKS: dict[str, threading.Lock] = {}  # POSIX record locks do not exclude threads of one process


class RecordLock(BaseJournalFileLock):
    """An exclusive ``lockf`` lock on ``PATH.flock`` (NFSv3+ and local disks), released by the kernel if its
    holder dies, plus a per-path thread lock."""

    def __init__(self, path: str) -> None:
        self._path = path + ".flock"
        self._thread_lock = _THREAD_LOCKS.setdefault(os.path.abspath(path), threading.Lock())
        self._fd: int | None = None

    def acquire(self) -> bool:
        self._thread_lock.acquire()
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.lockf(fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                fcntl.lockf(fd, fcntl.LOCK_UN)
                os.close(fd)
        finally:
            self._thread_lock.release()


def cut_torn_tail(path: str) -> int:
    """Drop a partial last line (a record torn by a kill mid-append); returns the bytes removed."""
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return 0
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return 0
        pos = end
        while pos > 0:
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            nl = f.read(step).rfind(b"\n")
            if nl >= 0:
                f.truncate(pos + nl + 1)
                return end - (pos + nl + 1)
        f.truncate(0)
        return end


class JournalBackend(JournalFileBackend):
    """Optuna's journal file with ``RecordLock`` and torn-record repair (same file format)."""

    def __init__(self, file_path: str) -> None:
        super().__init__(file_path, lock_obj=RecordLock(file_path))

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        import json

        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        with get_lock_file(self._lock):
            cut_torn_tail(self._file_path)  # the torn record was never acknowledged: its writer died in it
            with open(self._file_path, "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())


def _sqlite_immediate(storage: optuna.storages.RDBStorage) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE`` (SQLAlchemy's documented pysqlite recipe)."""
    from sqlalchemy import event

    engine = storage.engine

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # pooled connections were opened before the listeners


def _driver_url(url: str) -> str:
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _rdb(url: str, kwargs: dict[str, Any], sqlite_file: Path | None, create: bool = True
         ) -> optuna.storages.RDBStorage:
    """RDBStorage. Two processes creating a new database at once race on its schema (Optuna creates the tables
    and the version row without a lock): a SQLite file is created under a file lock; on a server, the slower
    process finds the schema there and opens it again."""
    from sqlalchemy.exc import SQLAlchemyError

    if not create:  # a reader: the schema is there (_check_exists), never create or change it
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_table_creation=True)
    if sqlite_file is not None:
        with _file_lock(sqlite_file.with_name(sqlite_file.name + ".init.lock")):
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except SQLAlchemyError as e:
            racing = any(w in str(e).lower() for w in ("already exists", "duplicate key", "unique constraint"))
            if not racing or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def open_storage(url: str | None, create: bool = True) -> optuna.storages.BaseStorage:
    """``None`` -> ``default_storage()``; a path or ``journal:PATH`` -> JournalStorage; ``sqlite:///``,
    ``postgresql://``, ``mysql://`` -> RDBStorage. ``create=False`` (commands that only read a study) never creates
    a file, a database schema or a folder: a storage that is not there is a ``StorageError`` naming it. Dead
    workers are detected by the engines' own heartbeat attribute (study.py), which works the same on every
    storage."""
    url = url or default_storage()
    if not create:
        _check_exists(url)
    try:
        if "://" not in url:
            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalBackend(str(path)))
        sqlite = url.startswith("sqlite")
        name = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
        sqlite_file = Path(name) if name and name != ":memory:" else None
        if sqlite_file is not None:
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        # sqlite: wait on the file lock instead of failing under concurrent workers
        kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
        storage = _rdb(_driver_url(url), kwargs, sqlite_file, create)
        if sqlite:
            _sqlite_immediate(storage)
        return storage
    except Exception as e:  # unreachable server, bad URL, missing driver, unwritable path
        why = f"{type(e).__name__}: {first_line(e)}"
        if isinstance(e, ImportError) and url.startswith("postgresql"):
            why += " (install the PostgreSQL driver: pip install psycopg2-binary)"
        raise StorageError(redact(f"cannot open storage {mask_url(url)!r}: {why}", url)) from None


class MissingStorage(StorageError):
    """A reader's storage is not there: no file, or a database without Optuna's tables."""


def _check_exists(url: str) -> None:
    """For readers: the journal or SQLite file must exist, and a database server must hold Optuna's tables."""
    if "://" not in url or url.startswith("sqlite:///"):
        path = Path(url.removeprefix("journal:").removeprefix("sqlite:///"))
        if not path.is_file():
            raise MissingStorage(f"storage {mask_url(url)}: no such file, so no study there (--storage, or "
                                 f"${STORAGE_ENV}; default {DEFAULT_STORAGE} relative to this folder)")
        return
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(_driver_url(url))
        try:
            found = sqlalchemy.inspect(engine).has_table("studies")
        finally:
            engine.dispose()
    except Exception as e:
        raise StorageError(redact(f"cannot open storage {mask_url(url)!r}: {type(e).__name__}: "
                                  f"{first_line(e)}", url)) from None
    if not found:
        raise MissingStorage(f"storage {mask_url(url)}: the database holds no study (no Optuna tables)")


# -- secrets and faults ------------------------------------------------------------------------------------------
_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<password>[^@\s]*)(?P<at>@)")


def mask_url(url: str | None) -> str:
    """The storage URL as it may be shown: a password becomes ``***`` (``postgresql://alice:***@host/db``)."""
    return _PASSWORD.sub(r"\g<head>***\g<at>", url or default_storage())


def redact(text: str, url: str | None = None) -> str:
    """``text`` with every URL password masked, and ``url``'s password wherever else it appears."""
    m = _PASSWORD.search(url or "")
    if m and m.group("password"):
        text = text.replace(m.group("password"), "***")
    return _PASSWORD.sub(r"\g<head>***\g<at>", text)


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# errors of the file system a storage lives on: no retry and no other trial can succeed while they last
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


def is_storage_fault(e: BaseException) -> bool:
    """Whether ``e`` comes from the study storage or its disk rather than from a trial: a full disk, a database
    error, a lost connection. Such a fault stops the run (a trial must never fail or finish because of it)."""
    from optuna.exceptions import StorageInternalError

    if isinstance(e, StorageInternalError) or (isinstance(e, OSError) and e.errno in _DISK_ERRNOS):
        return True
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:
        return False
    return isinstance(e, SQLAlchemyError)


class StorageFault(StorageError):
    """The storage failed under a running search; the message names it (password masked) and the cause."""

    def __init__(self, url: str | None, cause: BaseException, study: str | None = None) -> None:
        resume = f"hybridsearch resume {study}" if study else "resume"
        cause = _root(cause)
        super().__init__(redact(f"storage {mask_url(url)}: {type(cause).__name__}: {first_line(cause)}; the run "
                                f"stopped, finished trials are kept: fix the storage, then {resume} re-runs "
                                "the trials it interrupted", url))

    def __reduce__(self) -> tuple:  # picklable from a worker process: the message is the state
        return (_rebuild_fault, (str(self),))


def _root(e: BaseException) -> BaseException:
    """The error under Optuna's wrappers (``StorageInternalError`` says only that a commit failed)."""
    seen = {id(e)}
    while (inner := e.__cause__ or e.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        e = inner
    return e


def _rebuild_fault(message: str) -> StorageFault:
    e = StorageFault.__new__(StorageFault)
    StorageError.__init__(e, message)
    return e


@contextlib.contextmanager
def storage_faults(url: str | None, study: str | None = None) -> Iterator[None]:
    """Turn a storage fault raised inside the block into one ``StorageFault``."""
    try:
        yield
    except StorageFault:
        raise
    except Exception as e:
        if is_storage_fault(e):
            raise StorageFault(url, e, study) from None
        raise
