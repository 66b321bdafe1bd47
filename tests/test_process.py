"""hybridsearch.process: glibc's malloc keeps what it frees, checked through malloc's own counters (mallinfo2) in
fresh interpreters: an 8 MiB block comes from the heap instead of an mmap, and freeing it gives nothing back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from hybridsearch.process import ENV, glibc_version

needs_glibc = pytest.mark.skipif(glibc_version() is None, reason="the settings are glibc's")

# Allocates and frees 8 MiB after `SETUP` and prints malloc's counters around it as JSON: heap bytes taken from the
# kernel (arena), bytes in mmapped blocks (hblkhd).
PROBE = textwrap.dedent("""
    import ctypes, json
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    SETUP
    def info():
        i = libc.mallinfo2()
        return {"arena": i.arena, "mmapped": i.hblkhd}
    before = info()
    p = libc.malloc(8 << 20)
    ctypes.memset(p, 1, 8 << 20)
    held = info()
    libc.free(p)
    print(json.dumps({"applied": applied, "before": before, "held": held, "freed": info()}))
""")


def probe(setup: str, env: dict[str, str] | None = None) -> dict:
    code = PROBE.replace("SETUP", setup)
    run_env = {k: v for k, v in os.environ.items() if k != ENV} | (env or {})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_glibc
def test_glibc_defaults_mmap_a_large_block() -> None:  # the control: what keep_freed_memory changes
    r = probe("applied = None")
    assert r["held"]["mmapped"] - r["before"]["mmapped"] >= 8 << 20
    assert r["freed"]["mmapped"] == r["before"]["mmapped"]  # unmapped again: the next one faults in new pages


@needs_glibc
def test_keep_freed_memory_serves_large_blocks_from_the_heap_and_keeps_them() -> None:
    r = probe("from hybridsearch.process import keep_freed_memory as keep\napplied = [keep(), keep()]")
    assert r["applied"] == [True, True]  # applied, and a second call is a no-op that says so
    assert r["held"]["mmapped"] == r["before"]["mmapped"]
    assert r["held"]["arena"] - r["before"]["arena"] >= 8 << 20
    assert r["freed"]["arena"] == r["held"]["arena"]  # nothing trimmed: the pages stay for the next step


@needs_glibc
def test_opt_out_leaves_glibc_alone() -> None:
    r = probe("from hybridsearch.process import keep_freed_memory\napplied = keep_freed_memory()", {ENV: "system"})
    assert r["applied"] is False
    assert r["held"]["mmapped"] - r["before"]["mmapped"] >= 8 << 20


@needs_glibc
def test_the_cli_applies_it() -> None:
    r = probe("from hybridsearch import cli, process\ncli.main(['list', 'methods'])\napplied = process._applied")
    assert r["applied"] is True
    assert r["held"]["mmapped"] == r["before"]["mmapped"]


def test_off_glibc_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    from hybridsearch import process

    monkeypatch.setattr(process, "_applied", False)
    monkeypatch.setattr(process, "glibc_version", lambda: None)
    assert process.keep_freed_memory() is False
    assert process._applied is False
