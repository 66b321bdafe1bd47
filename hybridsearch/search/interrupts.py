"""Signals of a search process: SIGTERM and SIGHUP unwind like Ctrl-C, and a worker process never outlives its
driver (a headless worker would go on taking trials while a later ``resume`` becomes a second driver)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import Interrupted


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (a scheduler, a closed terminal) unwind like Ctrl-C in the main thread: the running
    trials are marked interrupted and the worker processes stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGTERM when ``parent`` dies, even by SIGKILL (no headless orphan workers)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        raise Interrupted(signal.SIGTERM)
