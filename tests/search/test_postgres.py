"""A real PostgreSQL server on loopback (Debian's ``postgresql`` package: initdb into a temporary folder, a free
port, a socket folder of its own; run as a non-root user when the tests run as root) shared by two worker
processes: the study finishes exactly, and survives a SIGKILL of the whole run followed by ``resume``.
Skipped, with the reason, only where the server binaries or the psycopg2 driver are missing."""

from __future__ import annotations

import glob
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState
from test_reliability import Ledger, Study, check_final, kill_group, mini_root, n_complete  # noqa: F401


def _bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> str | None:
    """PostgreSQL refuses to run as root: use ``postgres`` (created by the package) or ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.skip("running as root and neither a 'postgres' nor a 'nobody' user exists to run the server")


def _as(user: str | None, argv: list[str], **kw) -> subprocess.CompletedProcess:
    cmd = argv if user is None else ["runuser", "-u", user, "--", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                    "(apt-get install postgresql; .ci/run installs it)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("the psycopg2 driver is not installed (pip install psycopg2-binary; in the dev extra)")
    user = _server_user()
    home = tempfile.mkdtemp(prefix="hybridsearch-pg-")  # outside pytest's root-only temp folder
    data, sock, log = f"{home}/data", f"{home}/sock", f"{home}/server.log"
    os.mkdir(sock)
    if user is not None:
        pw = pwd.getpwnam(user)
        for p in (home, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    try:
        r = _as(user, [f"{bin_dir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync",
                       "-E", "UTF8", "--locale=C"])
        assert r.returncode == 0, r.stdout + r.stderr
        opts = f"-p {port} -h 127.0.0.1 -k {sock} -c fsync=off -c max_connections=200"
        r = _as(user, [f"{bin_dir}/pg_ctl", "-D", data, "-o", opts, "-l", log, "-w", "-t", "60", "start"])
        assert r.returncode == 0, r.stdout + r.stderr + (Path(log).read_text() if os.path.exists(log) else "")
        r = _as(user, [f"{bin_dir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "hs"])
        assert r.returncode == 0, r.stdout + r.stderr
        yield f"postgresql://postgres@127.0.0.1:{port}/hs"
    finally:
        _as(user, [f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"])
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_kill_and_resume_on_postgresql(tmp_path, mini_root, pg_url):  # noqa: F811
    s = Study(tmp_path, mini_root, pg_url, trials=8)
    ledger = Ledger()
    proc = s.start("--workers", "2")  # two workers on the server, killed with their driver mid-run
    try:
        s.wait_for(proc, lambda ts: n_complete(ts) >= 2)
        time.sleep(random.uniform(0.0, 0.8))
    finally:
        kill_group(proc)
    ledger.record(s.trials())
    assert n_complete(s.trials()) >= 2 and s.trials()[0].user_attrs["worker"]["pid"] != proc.pid

    proc = s.start("--workers", "2")
    try:
        assert proc.wait(timeout=240) == 0, s.tail()
    finally:
        kill_group(proc)
    for t in s.trials():
        if t.state.is_finished():
            ledger.finished.setdefault(t.number, (t.state.name, t.values))
    check_final(s, ledger)
    log = "".join(p.read_text() for p in s.logs)
    assert "Traceback" not in log and "OperationalError" not in log, log[-3000:]
    pids = {t.user_attrs["worker"]["pid"] for t in s.trials() if t.state == TrialState.COMPLETE}
    assert len(pids) >= 3  # two workers per run shared the server


def test_a_password_never_shows_on_a_live_server(pg_url, capsys):
    """"no study ... in URL" on a reachable server: the password (trust auth ignores it) is masked."""
    from hybridsearch.cli import main

    url = pg_url.replace("postgresql://postgres@", "postgresql://postgres:S3cr3tPW@")
    capsys.readouterr()
    assert main(["show", "nosuchstudy", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "no study 'nosuchstudy'" in err and "postgres:***@" in err and "S3cr3tPW" not in err, err
