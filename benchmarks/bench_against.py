"""Benchmarks of this tree against another commit's, in alternating rounds: prints JSON.

    OMP_NUM_THREADS=1 python benchmarks/bench_against.py --commit 80aa129 [--rounds 3] \\
        [--bench "bench_train_cpu.py --threads 1 --steps 16"] [--bench "bench_lm_train.py --threads 1"]

Runs the same benchmark script of each tree, each in its own interpreter, the other commit's first, round after
round, so that the drift of a shared machine (tens of percent within minutes) cancels in each round's ratio. The
other commit is exported with ``git archive`` and installed (not editable) into its own virtual environment with
this interpreter's torch version, cached under ``$HYBRIDSEARCH_CACHE/bench-trees/<commit>``. One interpreter for
both will not do: an editable install maps ``hybridsearch.kernels`` onto this work tree's ``kernels/`` whatever
``PYTHONPATH`` says, so the other tree would run this tree's kernels. Reported: every throughput (a key ending in
``per_s``) both trees print, each round's values and this / other ratio, and the ratios' median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BENCHES = ("bench_train_cpu.py --threads 1 --steps 16", "bench_lm_train.py --threads 1")


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if res.returncode:
        tail = (res.stderr or res.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"{shlex.join(cmd)} failed (exit {res.returncode}):\n" + "\n".join(tail))
    return res


def other_tree(commit: str) -> tuple[Path, Path]:
    """(source folder, python) of ``commit``, exported and installed once into a cached virtual environment."""
    sha = _run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{commit}^{{commit}}"]).stdout.strip()
    env = os.environ.get("HYBRIDSEARCH_CACHE")
    home = (Path(env).expanduser() if env else Path.home() / ".cache" / "hybridsearch") / "bench-trees" / sha[:12]
    src, python = home / "src", home / "venv" / "bin" / "python"
    if (home / "ready").exists():
        return src, python
    src.mkdir(parents=True, exist_ok=True)
    print(f"exporting {sha[:12]} and installing it into {home / 'venv'} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryFile() as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", sha], stdout=f, check=True)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python 3.11.4 and later
            tar.extractall(src, **kw)
    _run([sys.executable, "-m", "venv", str(home / "venv")])
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"  # the same torch as this interpreter's
    _run([str(python), "-m", "pip", "install", "-q", "--no-compile", torch_pin, str(src)])
    (home / "ready").touch()
    return src, python


def last_json(text: str, what: str) -> dict:
    """The last JSON object a benchmark printed: an indented one (from its last line "{"), else its last line."""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln == "{"]
    try:
        if starts:
            return json.loads("\n".join(lines[starts[-1]:]))
        return json.loads(next(ln for ln in reversed(lines) if ln.startswith("{")))
    except (StopIteration, json.JSONDecodeError) as e:
        raise SystemExit(f"{what} printed no JSON object at its end ({e})") from None


def throughputs(obj: object, path: str = "", rate: bool = False) -> dict[str, float]:
    """Every number under a key ending in ``per_s`` (at any depth above it), by its /-joined key path."""
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return {path: float(obj)} if rate else {}
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(throughputs(v, f"{path}/{k}" if path else str(k), rate or str(k).endswith("per_s")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commit", required=True, help="the other tree: any git revision of this repository")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bench", action="append", help="a script of benchmarks/ and its arguments (repeatable); "
                    f"default: {' and '.join(repr(b) for b in DEFAULT_BENCHES)}")
    args = ap.parse_args()
    benches = args.bench or list(DEFAULT_BENCHES)
    src, python = other_tree(args.commit)
    trees = {"other": (src, str(python)), "this": (ROOT, sys.executable)}
    for bench in benches:
        script = shlex.split(bench)[0]
        for name, (root, _) in trees.items():
            if not (root / "benchmarks" / script).is_file():
                raise SystemExit(f"--bench {bench!r}: {name} tree ({root}) has no benchmarks/{script}")
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as cwd:  # neither tree's files on the path of the other's interpreter
        for bench in benches:
            script, *rest = shlex.split(bench)
            rounds: list[dict[str, dict[str, float]]] = []
            for r in range(args.rounds):
                got = {}
                for name, (root, py) in trees.items():
                    print(f"{bench}: round {r + 1}/{args.rounds}, {name} tree", file=sys.stderr, flush=True)
                    res = _run([py, str(root / "benchmarks" / script), *rest], cwd=cwd)
                    got[name] = throughputs(last_json(res.stdout, f"{name} tree's {script}"))
                rounds.append(got)
            keys = [k for k in rounds[0]["this"] if all(k in g["other"] and k in g["this"] for g in rounds)]
            ratios = {k: [round(g["this"][k] / g["other"][k], 3) for g in rounds] for k in keys}
            report[bench] = {
                "rounds": rounds,
                "ratio_this_over_other": {k: {"rounds": v, "median": round(statistics.median(v), 3)}
                                          for k, v in ratios.items()},
            }
    head = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).stdout.strip()
    print(json.dumps({
        "benchmark": "this tree against another commit, alternating rounds (higher ratio: this tree faster)",
        "this": f"{head} (work tree)", "other": args.commit, "results": report,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average": os.getloadavg(), "torch": torch.__version__,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
    }, indent=2))


if __name__ == "__main__":
    main()
