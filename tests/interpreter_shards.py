"""A test module run as a script under the Triton interpreter, its cases split over the cores.

The interpreter runs on one core while pytest only waits for it, so the cases run as up to two scripts side by side
(``script shard shards``: every shards-th case from the shard-th), each printing JSON on its last line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_shards(script: Path, timeout: int) -> list[dict]:
    """Each shard's JSON, in shard order; raises with the shard's stderr when one fails."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HYBRIDSEARCH_SCAN_BACKEND", None)
    shards = max(1, min(2, os.cpu_count() or 1))
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(shards)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=script.parents[2]) for i in range(shards)]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-4000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            proc.kill()  # a no-op for the finished ones
    return results


def shard_args() -> tuple[int, int]:
    """(shard, shards) from the script's arguments; (0, 1) without them."""
    return (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (0, 1)
