"""Watchdog for a local Ray instance started by a search driver: ``python _ray_reaper.py DRIVER_PID TEMP_DIR``.

Run by file path (no package import, starts in milliseconds) in its own session. While the driver lives it
records the driver's Ray descendants (gcs_server, raylet, agents, workers); when the driver dies (even by
SIGKILL, which Ray's own fate-sharing does not fully cover: its agents outlive it) or sends SIGTERM after
``ray.shutdown()``, it ends every recorded process still alive and removes TEMP_DIR. Needs ``psutil`` (Ray
vendors it; the driver puts its folder on PYTHONPATH)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time

import psutil

POLL_S = 0.3
GRACE_S = 3.0


def is_ray(p: psutil.Process) -> bool:
    try:
        if p.name() in ("raylet", "gcs_server"):
            return True
        cmd = p.cmdline()
    except psutil.Error:
        return False
    return bool(cmd) and (cmd[0].startswith("ray::") or any("/ray/" in c for c in cmd))


def scan(driver: psutil.Process, known: dict[int, float]) -> None:
    me = os.getpid()
    for p in driver.children(recursive=True):
        if p.pid != me and p.pid not in known and is_ray(p):
            with contextlib.suppress(psutil.Error):
                known[p.pid] = p.create_time()


def alive(known: dict[int, float]) -> list[psutil.Process]:
    out = []
    for pid, created in known.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def end(known: dict[int, float], wait: float) -> None:
    """Give the processes ``wait`` seconds to exit by themselves, then SIGTERM (Python unwinds, releasing file
    locks such as the journal storage's), then SIGKILL what is left."""
    for sig, grace in ((None, wait), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        for p in alive(known) if sig else ():
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        deadline = time.time() + grace
        while alive(known) and time.time() < deadline:
            time.sleep(0.1)


def main(driver_pid: int, temp_dir: str) -> None:
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the driver's death or SIGTERM ends the watch
    known: dict[int, float] = {}
    try:
        driver = psutil.Process(driver_pid)
        while not stop and driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
            scan(driver, known)
            time.sleep(POLL_S)
    except psutil.Error:
        pass  # the driver is gone
    end(known, GRACE_S if stop else 0.0)
    shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
