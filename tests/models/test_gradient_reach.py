"""Every method's tensors receive a gradient on every scan backend (reference, the fused cpu backend, Triton under
its interpreter): a fused path that read a module's base tensor directly (``.weight``, ``A_log``) instead of
the effective one, or skipped a hook (an initial state, an output term), would leave an adapter silently
untrained, and only this check would notice.

Each case is one method at its defaults on a tiny Vim, a tiny LM and a tiny Mamba-2 LM, its tensors moved off their
(often zero) init so that every path carries signal, one forward and backward of a training step. Mamba-2 runs the
SSD scan, whose backends here are the reference and cpu ones (its Triton kernels are mamba_ssm's, CUDA only).
Sparse dimension tuning is checked in both phases: its warm-up delta during the warm-up, its selected values after it.

The Triton cases run in subprocesses (this file as a script, the cases split over the cores) with
``TRITON_INTERPRET=1``, which must be set before triton is first imported.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))  # conftest's tiny models, also when run as a script

from conftest import KINDS, applicable, perturb_trainable, tiny_input, tiny_loss, tiny_model  # noqa: E402
from interpreter_shards import run_shards, shard_args  # noqa: E402

from hybridsearch import apply_peft  # noqa: E402
from hybridsearch.peft import end_warmup  # noqa: E402

WARMUP = ("sdt",)  # methods checked during their warm-up too


def cases() -> list[tuple[str, str, str]]:
    """(kind, method, phase) for every registered method on every model kind it applies to."""
    out = []
    for kind in KINDS:
        for name in applicable(kind):
            out.append((kind, name, "trained"))
            if name in WARMUP:
                out.append((kind, name, "warm-up"))
    return out


CASES = cases()
TRITON_CASES = [c for c in CASES if c[0] != "mamba2"]  # the SSD scan has no Triton backend to interpret


def case_id(case: tuple[str, str, str]) -> str:
    kind, name, phase = case
    return f"{kind}-{name}" + ("-warmup" if phase == "warm-up" else "")


def unreached(kind: str, name: str, phase: str, backend: str) -> dict[str, object]:
    """The method's trainable tensors whose gradient is missing or all zero after one training step."""
    model = apply_peft(tiny_model(kind), {"methods": {name: {}}})
    if phase != "warm-up":
        end_warmup(model)
    perturb_trainable(model, std=0.5, head=False)
    used = []
    for m in model.mixers:
        m.scan_backend = backend
    from hybridsearch.models import mamba2 as mamba2_mod
    from hybridsearch.models import mixer as mixer_mod

    spied = [(mixer_mod, "selective_scan"), (mixer_mod, "selective_scan_bidirectional"),
             (mamba2_mod, "ssd_scan")]  # the scans the mixers call
    reals = [getattr(mod, name) for mod, name in spied]

    def spy(real):
        def call(*a, **k):
            used.append(k["backend"])
            return real(*a, **k)
        return call

    for (mod, name), real in zip(spied, reals):
        setattr(mod, name, spy(real))
    try:
        tiny_loss(kind, model.train()(tiny_input(kind, batch=1))).backward()  # batch 1: the interpreter is slow
    finally:
        for (mod, name), real in zip(spied, reals):
            setattr(mod, name, real)
    idle = ".values." if phase == "warm-up" else None  # sdt reads its selected values only after the warm-up
    tensors = {n: p for n, p in model.named_parameters()
               if p.requires_grad and "peft" in n.split(".") and not (idle and idle in n)}
    missing = sorted(n for n, p in tensors.items() if p.grad is None or not p.grad.abs().sum() > 0)
    return {"checked": len(tensors), "missing": missing, "backends": sorted(set(used))}


def _check(res: dict[str, object], backend: str) -> None:
    assert res["checked"] > 0
    assert res["backends"] == [backend]  # the scan ran on the backend under test, nothing else
    assert res["missing"] == [], f"no gradient reached {res['missing']}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_reference_backend(case):
    _check(unreached(*case, "reference"), "reference")


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                    reason="no C++ compiler: the cpu backend cannot be built")
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_cpu_backend(case, monkeypatch):
    monkeypatch.delenv("HYBRIDSEARCH_SCAN_BACKEND", raising=False)
    _check(unreached(*case, "cpu"), "cpu")


@pytest.fixture(scope="module")
def triton_results() -> dict:
    pytest.importorskip("triton")
    return {k: v for shard in run_shards(HERE, timeout=900) for k, v in shard.items()}


@pytest.mark.parametrize("case", TRITON_CASES, ids=[case_id(c) for c in TRITON_CASES])
def test_triton_backend_under_the_interpreter(case, triton_results):
    _check(triton_results[case_id(case)], "triton")


def test_every_method_is_checked():
    from hybridsearch import METHODS

    assert {name for _, name, _ in CASES} == set(METHODS.names())


if __name__ == "__main__":  # [shard shards]: every shards-th case from the shard-th
    assert os.environ.get("TRITON_INTERPRET") == "1"
    torch.set_num_threads(1)
    shard, shards = shard_args()
    print(json.dumps({case_id(c): unreached(*c, "triton") for c in TRITON_CASES[shard::shards]}))
