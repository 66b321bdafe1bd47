"""Typed errors. The CLI turns any of these into one line on stderr and exit status 2."""

from __future__ import annotations


class HybridSearchError(Exception):
    """Base class for every error a user can cause (bad file, bad key, bad value)."""


class ConfigError(HybridSearchError, ValueError):
    """A PEFT config, search space or recipe is invalid. The message names file, key path and allowed values."""


class CheckpointError(HybridSearchError):
    """A checkpoint cannot be loaded: wrong keys or shapes, truncated, or unsafe to unpickle."""


class DataError(HybridSearchError):
    """A dataset is missing or malformed; the message names the file and line."""


class StorageError(HybridSearchError):
    """A study storage cannot be reached or opened."""


class TrialFailure(HybridSearchError):
    """A trial cannot finish (non-finite loss, out of memory, bad data); the study goes on."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, unwinding like Ctrl-C (running trials are marked interrupted and re-run on resume)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
