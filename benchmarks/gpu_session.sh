#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (the device tool): GPU tests of the fused scan, then the scan and
# training-step benchmark. Results land in $OUT (default ./gpu-results): pytest.txt, bench_scan.json, env.txt.
# The machine has torch + triton but no network and no optuna: the package is installed without dependencies
# and only the GPU tests that need none of the search stack run.
#   usage (device tool): bash benchmarks/gpu_session.sh        (about 3-6 minutes on one H200)
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c \
  "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} >"$OUT/env.txt" 2>&1
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/hs . >"$OUT/install.txt" 2>&1 \
  || { echo "install failed: see $OUT/install.txt"; exit 1; }
export PYTHONPATH=/tmp/hs
# `pytest`, not `python -m pytest`: the checkout's hybridsearch/ must not shadow the installed package (which
# maps kernels/ to hybridsearch.kernels)
timeout 240 pytest -q -m gpu -p no:cacheprovider tests/kernels/test_selective_scan_triton.py >"$OUT/pytest.txt" 2>&1
echo "pytest exit $?" >>"$OUT/pytest.txt"
timeout 300 python3 benchmarks/bench_scan.py >"$OUT/bench_scan.json" 2>"$OUT/bench_scan.err"
echo "bench_scan exit $?"
tail -3 "$OUT/pytest.txt"
cat "$OUT/bench_scan.json"
