"""Triton selective scan vs. the reference backend: outputs, last state and every gradient.

CPU: the kernels run under the Triton interpreter, which must be switched on (TRITON_INTERPRET=1) before
triton is first imported. Other test modules in the same pytest process import triton/torch first, so the
interpreter cases run in subprocesses (this file executed as a script, its cases split over the cores by
tests/interpreter_shards.py) that print JSON; the tests assert on it. GPU (``-m gpu``): the same comparisons at
real shapes, in-process on CUDA.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the interpreter's shard runner
from interpreter_shards import run_shards, shard_args  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
TOL = {"float32": (6e-4, 2e-3), "bfloat16": (3e-2, 5e-2)}  # (rtol, atol) of mamba-ssm's own scan tests
TOL_INTERP_FP32 = (1e-4, 1e-4)  # tiny shapes on CPU: both backends are sequential fp32, so hold them tighter
MODEL_PEFT = {"methods": {"lora_X": {"rank": 4}, "additional_scan": {"states": 6}, "affix": {"tokens": 2}}}


@dataclass(frozen=True)
class Case:
    batch: int
    dim: int
    L: int
    N: int
    groups: int  # 0: 3-D B/C (batch, N, L)
    opts: str  # letters: z gate, D skip, b delta_bias, s softplus, i initial_state
    reverse: bool = False
    dtype: str = "float32"
    grads: str = "all"  # "all" or "u": which inputs require grad
    last: bool = True  # return_last_state (and put the last state into the loss)

    @property
    def id(self) -> str:
        g = f"g{self.groups}" if self.groups else "3d"
        return (f"b{self.batch}d{self.dim}L{self.L}N{self.N}{g}-{self.opts or 'plain'}"
                f"{'-rev' if self.reverse else ''}-{self.dtype}{'' if self.grads == 'all' else '-' + self.grads}"
                f"{'' if self.last else '-nolast'}")


def _cases() -> list[Case]:
    cases = []
    opt_cycle = ("zdbsi", "", "zbs", "di", "zdbsi", "bsi")
    k = 0
    for N in (16, 22, 4):
        for L in (7, 13):
            for groups in (0, 2):
                rev = k % 2 == 1
                dim = 24 if groups == 2 else 12  # 12 channels a group: two 8-wide blocks, the second masked
                cases.append(Case(2, dim, L, N, groups, opt_cycle[k % len(opt_cycle)], rev))
                k += 1
    cases += [
        Case(1, 12, 9, 16, 1, "zdbsi", True),
        Case(2, 8, 5, 16, 0, "zdbsi", False, grads="u", last=False),
        Case(2, 12, 1, 4, 0, "zdbsi", True),
        Case(2, 12, 7, 16, 0, "zdbsi", False, "bfloat16"),
        Case(2, 24, 13, 22, 2, "zdbsi", True, "bfloat16"),
    ]
    return cases


CASES = _cases()


def make_inputs(c: Case, device: str = "cpu", seed: int = 0) -> list[torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, c.dtype)

    def rnd(*shape, scale=1.0, shift=0.0, dtype=dt):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dtype).to(device)

    bc = (c.batch, c.N, c.L) if c.groups == 0 else (c.batch, c.groups, c.N, c.L)
    u = rnd(c.batch, c.dim, c.L)
    delta = rnd(c.batch, c.dim, c.L, scale=0.5, shift=-1.0 if "s" in c.opts else 0.0)
    if "s" not in c.opts:
        delta = delta.abs()
    elif c.L > 1:
        delta[0, 0, 0] = 25.0  # above softplus' threshold: identity branch
    A = -(torch.rand(c.dim, c.N, generator=g) + 0.1).to(device)
    B, C = rnd(*bc), rnd(*bc)
    D = rnd(c.dim, dtype=torch.float32) if "d" in c.opts else None
    z = rnd(c.batch, c.dim, c.L) if "z" in c.opts else None
    bias = rnd(c.dim, scale=0.3, dtype=torch.float32) if "b" in c.opts else None
    h0 = rnd(c.batch, c.dim, c.N, dtype=torch.float32) if "i" in c.opts else None
    return [u, delta, A, B, C, D, z, bias, h0]


def run_case(fn, c: Case, inputs, seed: int = 1) -> dict[str, torch.Tensor]:
    """Forward + backward of a fixed random weighting of out (and last state); returns results by name."""
    ins = [None if x is None else x.detach().clone() for x in inputs]
    for i, x in enumerate(ins):
        if x is not None and (c.grads == "all" or i == 0):
            x.requires_grad_(True)
    u, delta, A, B, C, D, z, bias, h0 = ins
    res = fn(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus="s" in c.opts,
             return_last_state=c.last, initial_state=h0, reverse=c.reverse)
    out, last = res if c.last else (res, None)
    g = torch.Generator().manual_seed(seed)
    loss = (out.float() * torch.randn(out.shape, generator=g).to(out.device)).sum()
    if last is not None:
        loss = loss + (last * torch.randn(last.shape, generator=g).to(last.device)).sum()
    loss.backward()
    got = {"out": out.detach()}
    if last is not None:
        got["last"] = last.detach()
    for name, x in zip(NAMES, ins):
        if x is not None and x.requires_grad:
            got["d" + name] = x.grad
    return got


def violation(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> float:
    """max |a - b| / (atol + rtol |b|): <= 1 means allclose."""
    a, b = a.double(), b.double()
    return float(((a - b).abs() / (atol + rtol * b.abs())).max()) if a.numel() else 0.0


def compare(c: Case, device: str = "cpu") -> dict[str, float]:
    ss = importlib.import_module("hybridsearch.kernels.selective_scan")
    ref = importlib.import_module("hybridsearch.kernels.selective_scan.reference").selective_scan_reference
    inputs = make_inputs(c, device)
    want = run_case(ref, c, inputs)
    got = run_case(lambda *a, **k: ss.selective_scan(*a, backend="triton", **k), c, inputs)
    rtol, atol = TOL_INTERP_FP32 if device == "cpu" and c.dtype == "float32" else TOL[c.dtype]
    assert set(got) == set(want), (sorted(got), sorted(want))
    return {k: violation(got[k], want[k], rtol, atol) for k in want}


# -- CPU: interpreter subprocess --------------------------------------------------------------------------------


def _interpreter_main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    torch.set_num_threads(1)
    tri = importlib.import_module("hybridsearch.kernels.selective_scan.triton").selective_scan_triton
    shard, shards = shard_args()
    results = {c.id: compare(c) for c in CASES[shard::shards]}
    if shard == shards - 1:  # the last shard has the fewest cases
        # Determinism: two runs of the same backward give bitwise-equal gradients (no atomics).
        c = CASES[0]
        r1, r2 = run_case(tri, c, make_inputs(c)), run_case(tri, c, make_inputs(c))
        results["deterministic"] = {k: float((r1[k] != r2[k]).sum()) for k in r1}
        results["model"] = compare_model("cpu")
    print(json.dumps({"cases": results, "check": [asdict(c) for c in CASES]}))


def compare_model(device: str, batch: int = 1) -> dict[str, float]:
    """Tiny Vim + LoRAp(X) + Additional-scan (N 4 + 6) + Affix: logits and trainable grads, triton vs reference."""
    from hybridsearch import apply_peft
    from hybridsearch.models import VimConfig, build

    torch.manual_seed(0)
    cfg = VimConfig(d_model=16, depth=2, img_size=16, patch_size=4, d_state=4, num_classes=5, drop_path_rate=0.0)
    model = apply_peft(build(cfg, device), MODEL_PEFT).eval()  # eval: no dropout, so both runs see the same net
    with torch.no_grad():  # the zero-initialised PEFT parts would hide gradient paths
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    x = torch.randn(batch, 3, 16, 16, device=device)
    res = {}
    for backend in ("reference", "triton"):
        for m in model.mixers:
            m.scan_backend = backend
        model.zero_grad(set_to_none=True)
        logits = model(x)
        (logits * torch.arange(logits.numel(), device=device).view_as(logits).cos()).sum().backward()
        res[backend] = {"logits": logits.detach(),
                        **{n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}}
    assert set(res["triton"]) == set(res["reference"]) and len(res["triton"]) > 2
    rtol, atol = TOL_INTERP_FP32 if device == "cpu" else TOL["float32"]
    return {k: violation(res["triton"][k], v, rtol, atol) for k, v in res["reference"].items()}


@pytest.fixture(scope="module")
def interp_results() -> dict:
    pytest.importorskip("triton")
    shards = run_shards(Path(__file__).resolve(), timeout=600)
    return {"cases": {k: v for shard in shards for k, v in shard["cases"].items()}, "check": shards[0]["check"]}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_interpreter_matches_reference(interp_results, case: Case) -> None:
    res = interp_results["cases"][case.id]
    expected = {"out", "du"} | ({"last"} if case.last else set())
    if case.grads == "all":
        expected |= {"ddelta", "dA", "dB", "dC"}
        expected |= {name for letter, name in zip("zdbi", ("dz", "dD", "ddelta_bias", "dinitial_state"))
                     if letter in case.opts}
    assert set(res) == expected
    bad = {k: v for k, v in res.items() if not v <= 1.0}
    assert not bad, f"tolerance exceeded (ratio to allowed error): {bad}"


def test_interpreter_deterministic(interp_results) -> None:
    assert all(v == 0 for v in interp_results["cases"]["deterministic"].values())


def test_interpreter_model_matches_reference(interp_results) -> None:
    res = interp_results["cases"]["model"]
    assert any("additional_scan" in k for k in res) and any("affix" in k for k in res)
    bad = {k: v for k, v in res.items() if not v <= 1.0}
    assert not bad, f"tolerance exceeded (ratio to allowed error): {bad}"


def test_auto_never_picks_triton_on_cpu(monkeypatch) -> None:
    """CPU tensors never reach the Triton kernel: without the fused cpu backend auto runs the reference (the cpu
    backend's own dispatch tests cover the case where it builds)."""
    ss = importlib.import_module("hybridsearch.kernels.selective_scan")
    calls = []
    real = ss.selective_scan_reference

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.delenv("HYBRIDSEARCH_SCAN_BACKEND", raising=False)
    monkeypatch.setattr(ss, "_cpu_available", lambda: False)
    monkeypatch.setattr(ss, "selective_scan_reference", spy)
    c = Case(1, 4, 5, 4, 0, "zdbs")
    u, delta, A, B, C, D, z, bias, _ = make_inputs(c)
    ss.selective_scan(u, delta, A, B, C, D, z, bias, True, backend="auto")
    assert calls == [1]


def test_cpu_tensors_rejected_without_interpreter() -> None:
    tri_mod = pytest.importorskip("hybridsearch.kernels.selective_scan.triton")
    if tri_mod._interpreting():
        pytest.skip("this process runs the interpreter")
    u, delta, A, B, C, *_ = make_inputs(Case(1, 4, 5, 4, 0, ""))
    with pytest.raises(RuntimeError, match="CUDA"):
        tri_mod.selective_scan_triton(u, delta, A, B, C)


# -- GPU: real shapes -------------------------------------------------------------------------------------------

GPU_CASES = [
    Case(2, 768, 197, 16, 0, "zdbs"),  # Vim-S layer, one direction
    Case(2, 768, 197, 16, 0, "zdbs", True),  # reverse by index
    Case(2, 768, 197, 22, 0, "zdbsi"),  # Additional-scan N = 16 + 6
    Case(2, 768, 197, 32, 0, "zdbs"),
    Case(1, 1536, 1031, 16, 2, "zdbsi", True),  # long L across many chunks, groups
    Case(2, 768, 197, 16, 0, "zdbsi", False, "bfloat16"),
    Case(1, 1536, 513, 22, 0, "zdbs", True, "bfloat16"),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", GPU_CASES, ids=[c.id for c in GPU_CASES])
def test_gpu_matches_reference(case: Case) -> None:
    pytest.importorskip("triton")
    res = compare(case, "cuda")
    bad = {k: v for k, v in res.items() if not v <= 1.0}
    assert not bad, f"tolerance exceeded (ratio to allowed error): {bad}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_model_matches_reference() -> None:
    pytest.importorskip("triton")
    res = compare_model("cuda", batch=4)
    bad = {k: v for k, v in res.items() if not v <= 1.0}
    assert not bad, f"tolerance exceeded (ratio to allowed error): {bad}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_auto_picks_triton() -> None:
    pytest.importorskip("triton")
    ss = importlib.import_module("hybridsearch.kernels.selective_scan")
    c = Case(2, 64, 33, 16, 0, "zdbs")
    u, delta, A, B, C, D, z, bias, _ = make_inputs(c, "cuda")
    auto = ss.selective_scan(u, delta, A, B, C, D, z, bias, True, backend="auto")
    tri = ss.selective_scan(u, delta, A, B, C, D, z, bias, True, backend="triton")
    assert torch.equal(auto, tri)


if __name__ == "__main__":
    _interpreter_main()
