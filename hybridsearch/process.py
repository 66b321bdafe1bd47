"""Process-wide settings for training on the CPU: glibc's malloc told to keep the memory it frees.

A training step allocates and frees the same few-megabyte activations and gradients every step. By default glibc
serves blocks over a dynamic threshold (128 KiB at first) with fresh ``mmap`` calls and returns the top of its heap
to the kernel when enough of it is free, so step after step the process faults in and zeroes new pages: about
6,000 page faults per mamba-proxy training step on the CI machine. ``keep_freed_memory`` raises the mmap threshold
to its 32 MiB maximum and turns trimming off: the heap grows to the step's peak once and its pages are reused,
warm. Measured (benchmarks/RESULTS.md): mamba-proxy steps 0.88-0.94x the time on the cpu backend, 0.94-0.97x on
the reference; vim-proxy's, ten times smaller, about the same. The cost: the process keeps its peak heap until it
exits (its peak RSS did not change).

The CLI applies it to itself and every search worker applies it to its process (``hybridsearch.cli``,
``search.optuna_engine``, ``search.ray_engine``). ``HYBRIDSEARCH_MALLOC=system`` keeps glibc's defaults. Other C
libraries (musl, macOS, Windows) are left alone.
"""

from __future__ import annotations

import ctypes
import os

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = (
    (M_MMAP_THRESHOLD, 32 << 20),  # glibc's maximum: smaller blocks come from the heap and are reused
    (M_TRIM_THRESHOLD, 2**31 - 1),  # never give the heap's free top back to the kernel
    (M_TOP_PAD, 64 << 20),  # grow the heap in large steps: fewer brk calls while it reaches its peak
)
ENV = "HYBRIDSEARCH_MALLOC"

_applied = False


def glibc_version() -> str | None:
    """``"glibc 2.36"`` when this process runs on glibc, else None."""
    try:
        v = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):  # not POSIX, or a C library without the name
        return None
    return v if v and v.startswith("glibc") else None


def keep_freed_memory() -> bool:
    """Apply ``SETTINGS`` to this process's malloc once; True when they are in force (now or before).

    False, changing nothing, off glibc or with ``HYBRIDSEARCH_MALLOC=system``.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV, "").strip().lower() == "system" or glibc_version() is None:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in SETTINGS)
    return _applied


__all__ = ["ENV", "SETTINGS", "glibc_version", "keep_freed_memory"]
