"""The ``cpu`` backend (fused C++ kernel) against the float64 loop and the reference; its conv; its build.

The kernel is built once into the user cache (``$HYBRIDSEARCH_CACHE``) and reused by every later test process.
Without a C++ compiler the backend's own tests skip; ``auto`` falling back to the reference is tested anyway.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from hybridsearch.kernels import (
    ScanDirection,
    causal_conv1d,
    causal_conv1d_bidirectional,
    selective_scan,
    selective_scan_bidirectional,
)
from hybridsearch.kernels.selective_scan.causal_conv1d import causal_conv1d_reference
from hybridsearch.kernels.selective_scan.naive import naive_selective_scan

cpu = importlib.import_module("hybridsearch.kernels.selective_scan.cpu")
dispatch = importlib.import_module("hybridsearch.kernels.selective_scan")
ref = importlib.import_module("hybridsearch.kernels.selective_scan.reference")
conv_wrapper = importlib.import_module("hybridsearch.kernels.selective_scan.causal_conv1d")

HAS_COMPILER = bool(os.environ.get("CXX") or any(shutil.which(c) for c in ("c++", "g++", "clang++")))
needs_kernel = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the cpu backend cannot be built")

OPTS = ("z", "D", "bias", "softplus", "init")
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_env_backend(monkeypatch):
    monkeypatch.delenv("HYBRIDSEARCH_SCAN_BACKEND", raising=False)


def make_inputs(batch, dim, L, N, groups, opts, dtype=torch.float32, seed=0, layout="contiguous"):
    """groups=0: 3-D B / C. layout "model": the mixer's views (channels innermost, z half of a wider tensor)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dt)

    bc_shape = (batch, N, L) if groups == 0 else (batch, groups, N, L)
    softplus = "softplus" in opts
    if softplus:
        delta = rnd(batch, dim, L, shift=-1.0)
        delta[0, 0, 0] = 25.0  # above softplus' threshold: identity branch
    else:
        delta = (torch.rand(batch, dim, L, generator=g) * 0.5 + 0.05).to(dtype)
    t = {
        "u": rnd(batch, dim, L), "delta": delta, "A": -(torch.rand(dim, N, generator=g) * 1.5 + 0.1),
        "B": rnd(*bc_shape), "C": rnd(*bc_shape),
        "D": rnd(dim) if "D" in opts else None, "z": rnd(batch, dim, L) if "z" in opts else None,
        "delta_bias": rnd(dim, scale=0.1, dt=torch.float32) if "bias" in opts else None,
        "initial_state": rnd(batch, dim, N, dt=torch.float32) if "init" in opts else None,
    }
    if layout == "model":
        def view(x):  # (b, c, L) as a channels-innermost view into a tensor twice as wide
            wide = torch.zeros(x.shape[0], x.shape[2], 2 * x.shape[1], dtype=x.dtype)
            wide[..., : x.shape[1]] = x.transpose(1, 2)
            return wide[..., : x.shape[1]].transpose(1, 2)
        t["u"], t["delta"] = view(t["u"]), view(t["delta"])
        if groups == 0:
            t["B"], t["C"] = view(t["B"]), view(t["C"])
        if t["z"] is not None:
            t["z"] = view(t["z"])
    return {k: (v.detach().requires_grad_() if v is not None else None) for k, v in t.items()}, softplus


def run(fn, x, softplus, reverse, **kw):
    return fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], softplus,
              return_last_state=True, initial_state=x["initial_state"], reverse=reverse, **kw)


def grads(x, out, last, gout, glast):
    names = [k for k in NAMES if x[k] is not None]
    loss = (out.to(gout.dtype) * gout).sum() + (last.to(glast.dtype) * glast).sum()
    return names, torch.autograd.grad(loss, [x[k] for k in names])


def check(L, N, groups, opts, reverse, dtype=torch.float32, batch=2, dim=40, layout="contiguous", A=None,
          **given):
    """The cpu kernel against the float64 loop; ``A`` and ``given`` (by input name) replace the random inputs."""
    x, softplus = make_inputs(batch, dim, L, N, groups, opts, dtype, layout=layout)
    if A is not None:
        x["A"] = A.detach().clone().requires_grad_()
    for k, v in given.items():
        x[k] = v.detach().to(x[k].dtype).clone().requires_grad_()
    x64 = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in x.items()}
    g = torch.Generator().manual_seed(1)
    gout, glast = torch.randn(batch, dim, L, generator=g), torch.randn(batch, dim, N, generator=g)
    out, last = run(selective_scan, x, softplus, reverse, backend="cpu")
    assert out.dtype == dtype and out.shape == (batch, dim, L)
    assert last.dtype == torch.float32 and last.shape == (batch, dim, N)
    want_out, want_last = run(naive_selective_scan, x64, softplus, reverse)
    rtol, atol = (1e-4, 1e-5) if dtype == torch.float32 else (2e-2, 2e-2)

    def close(a, b, what):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")

    close(out, want_out, "out")
    close(last, want_last, "last_state")
    names, got = grads(x, out, last, gout, glast)
    _, want = grads(x64, want_out, want_last, gout.double(), glast.double())
    for k, gr, gr64 in zip(names, got, want):
        assert gr.dtype == x[k].dtype and gr.shape == x[k].shape, k
        close(gr, gr64, f"grad {k}")


LAYOUTS = [pytest.param(0, id="G1-3d"), pytest.param(2, id="G2-4d")]
DIRS = [pytest.param(False, id="fwd"), pytest.param(True, id="rev")]


# L 130 spans several checkpoint chunks for every N (chunk = 8192 // (N x vector width) positions, at most 128).
@needs_kernel
@pytest.mark.parametrize("reverse", DIRS)
@pytest.mark.parametrize("opts", [pytest.param((), id="plain"), pytest.param(OPTS, id="all")])
@pytest.mark.parametrize("groups", LAYOUTS)
@pytest.mark.parametrize("L", [1, 7, 33, 130], ids=lambda v: f"L{v}")
@pytest.mark.parametrize("N", [4, 8, 16, 22], ids=lambda v: f"N{v}")
def test_matches_float64(N, L, groups, opts, reverse):
    check(L, N, groups, opts, reverse)  # dim 40: per group 20 channels, one full block of 16 and a partial one


@needs_kernel
@pytest.mark.parametrize("reverse", DIRS)
def test_checkpoints_skip_the_chunk_scanned_first(reverse):
    """The state entering the chunk a scan reaches first is the initial state: the forward saves one checkpoint per
    later chunk (none for a single chunk), and the backward starts that chunk from initial_state (all gradients)."""
    N, dim, chunk, W = 16, 40, cpu._chunk(16), cpu.vector_width()
    for L, saved in ((chunk, 0), (2 * chunk + 1, 2)):
        x, softplus = make_inputs(2, dim, L, N, 0, OPTS)
        call = cpu._Call(*(x[k] for k in NAMES), softplus, reverse)
        _, _, ckpt = call.forward(save=True)
        assert ckpt.numel() == 2 * -(-dim // W) * saved * N * W
        check(L, N, 0, OPTS, reverse)


@needs_kernel
@pytest.mark.parametrize("reverse", DIRS)
@pytest.mark.parametrize("opt", OPTS)
def test_single_option(opt, reverse):
    check(9, 16, 2, (opt,), reverse)


@needs_kernel
@pytest.mark.parametrize("reverse", DIRS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("groups", LAYOUTS)
def test_half_inputs(groups, dtype, reverse):
    check(33, 16, groups, OPTS, reverse, dtype=dtype)


@needs_kernel
@pytest.mark.parametrize("reverse", DIRS)
@pytest.mark.parametrize("opts", [pytest.param(OPTS, id="softplus"), pytest.param(("z", "D"), id="raw-delta")])
def test_decay_extremes(opts, reverse):
    """exp(delta A) where delta A falls far below fp32's range (the decay flushes to zero) and where A > 0 (growth):
    the kernel caps 2^(delta A log2 e) only when delta A can be positive (a positive A, or delta without softplus),
    and floors it only in the blocks whose chunk can fall below 2^-126 (channels 0-7 here; the others run without a
    clamp), all in one call."""
    N, dim = 8, 40
    A = -(torch.rand(dim, N, generator=torch.Generator().manual_seed(3)) * 1.5 + 0.1)
    A[:8] = -400.0  # with delta about 0.3, 2^(delta A log2 e) is below 2^-126 at every step
    A[8:16, ::2] = 0.05  # growth, and the cap's code path
    check(33, N, 0, opts, reverse, A=A)
    check(33, N, 0, opts, reverse, A=A.clamp(max=-0.01))  # every A negative: the uncapped path under softplus


@needs_kernel
@pytest.mark.parametrize("reverse", DIRS)
def test_softplus_and_gate_over_their_whole_range(reverse):
    """delta + bias and z from -60 to 60: softplus' and the gate's exps (2^(x log2 e) in the kernel) far out in
    both tails, and softplus' threshold at 20 exactly and on either side of it."""
    batch, dim, L = 2, 40, 33
    span = torch.linspace(-60.0, 60.0, batch * dim * L).reshape(batch, dim, L)
    delta = span[:, torch.randperm(dim, generator=torch.Generator().manual_seed(0))] / 3  # -20 to 20 for delta
    delta[0, 1, :3] = torch.tensor([20.0, 19.999, 20.001])
    check(L, 8, 0, OPTS, reverse, delta=delta, z=span.flip(-1))


@needs_kernel
def test_a_nan_delta_gives_nan_outputs():
    """softplus(NaN) is NaN, as torch's is: a NaN delta shows in the outputs from its position on."""
    x, softplus = make_inputs(1, 16, 9, 8, 0, ("softplus", "bias"))
    delta = x["delta"].detach().clone()
    delta[0, 3, 4] = float("nan")
    out = selective_scan(x["u"].detach(), delta, x["A"].detach(), x["B"].detach(), x["C"].detach(),
                         delta_bias=x["delta_bias"].detach(), delta_softplus=True, backend="cpu")
    want = naive_selective_scan(x["u"].detach(), delta, x["A"].detach(), x["B"].detach(), x["C"].detach(),
                                delta_bias=x["delta_bias"].detach(), delta_softplus=True)
    assert torch.equal(out.isnan(), want.isnan()) and out[0, 3, 4:].isnan().all()
    assert out.isnan().sum() == 5


def _directions(batch, dim, L, N, groups, opts, dtype, layout):
    """Two directions' inputs (different seeds) and one z, as ``make_inputs`` makes them."""
    xs = [make_inputs(batch, dim, L, N, groups, opts, dtype, seed=seed, layout=layout)[0] for seed in (0, 1)]
    z = xs[0]["z"]
    dirs = [ScanDirection(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"], x["initial_state"])
            for x in xs]
    return dirs, z


def _leaves(dirs, z):
    return [t for t in (*dirs[0], *dirs[1], z) if t is not None]


@needs_kernel
@pytest.mark.parametrize("layout", ["contiguous", "model"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("opts", [pytest.param(OPTS, id="all"), pytest.param(("softplus",), id="no-z"),
                                  pytest.param(("z", "softplus"), id="z")])
def test_bidirectional_equals_the_average_of_two_scans(opts, dtype, layout):
    """One output buffer and one z gradient written by both directions: the same output and every gradient as
    (forward scan + reverse scan) / 2 on the same kernel, and as the float64 loop."""
    dirs, z = _directions(2, 40, 33, 8, 2, opts, dtype, layout)
    softplus = "softplus" in opts
    g = torch.randn(2, 40, 33, generator=torch.Generator().manual_seed(5)).to(dtype)

    def two_scans(fn, dirs, z):
        ys = [fn(d.u, d.delta, d.A, d.B, d.C, d.D, z, d.delta_bias, softplus, initial_state=d.initial_state,
                 reverse=reverse) for d, reverse in zip(dirs, (False, True))]
        return (ys[0] + ys[1]) / 2

    fused = selective_scan_bidirectional(*dirs, z, softplus, backend="cpu")
    assert fused.dtype == dtype and fused.shape == (2, 40, 33)
    if layout == "model":
        assert fused.stride(1) == 1  # channels innermost, as the out_proj that follows reads it
    want = two_scans(lambda *a, **k: selective_scan(*a, **k, backend="cpu"), dirs, z)
    got_g = torch.autograd.grad(fused, _leaves(dirs, z), g)
    want_g = torch.autograd.grad(want, _leaves(dirs, z), g)
    rtol, atol = (1e-6, 1e-6) if dtype == torch.float32 else (1e-2, 1e-2)  # bf16: one rounding more or less
    torch.testing.assert_close(fused, want, rtol=rtol, atol=atol)
    for a, b in zip(got_g, want_g):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * max(1.0, b.abs().max().item()))
    with torch.no_grad():  # the path without autograd gives the same output
        torch.testing.assert_close(selective_scan_bidirectional(*dirs, z, softplus, backend="cpu"), fused,
                                   rtol=0, atol=0)
    if dtype == torch.float32:  # and both against float64
        d64 = [ScanDirection(*(None if t is None else t.detach().double().requires_grad_() for t in d)) for d in dirs]
        z64 = None if z is None else z.detach().double().requires_grad_()
        want64 = two_scans(naive_selective_scan, d64, z64)
        torch.testing.assert_close(fused.double(), want64, rtol=1e-4, atol=1e-5)
        for a, b in zip(got_g, torch.autograd.grad(want64, _leaves(d64, z64), g.double())):
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5 * max(1.0, b.abs().max().item()))


def test_bidirectional_on_other_backends_is_the_plain_average():
    dirs, z = _directions(2, 24, 9, 4, 0, OPTS, torch.float32, "contiguous")
    want = [selective_scan(d.u, d.delta, d.A, d.B, d.C, d.D, z, d.delta_bias, True, initial_state=d.initial_state,
                           reverse=r, backend="reference") for d, r in zip(dirs, (False, True))]
    assert torch.equal(selective_scan_bidirectional(*dirs, z, True, backend="reference"), (want[0] + want[1]) / 2)


@needs_kernel
def test_bidirectional_rejects_directions_of_different_shapes():
    dirs, z = _directions(2, 24, 9, 4, 0, OPTS, torch.float32, "contiguous")
    other, _ = _directions(2, 24, 10, 4, 0, OPTS, torch.float32, "contiguous")
    with pytest.raises(ValueError, match="one shape"):
        selective_scan_bidirectional(dirs[0], other[1], z, True, backend="cpu")
    fewer_states, _ = _directions(2, 24, 9, 3, 0, OPTS, torch.float32, "contiguous")  # the kernel's own check
    with pytest.raises(ValueError, match="one shape"):
        selective_scan_bidirectional(dirs[0], fewer_states[1], z, True, backend="cpu")


def _without_pair_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cpu backend calls, from here on, a library built from a source before the pair entry points."""
    lib = cpu.library()

    class OlderLibrary:
        def __getattr__(self, name):
            if name.endswith("_pair"):
                raise AttributeError(name)
            return getattr(lib, name)

    monkeypatch.setattr(cpu, "library", OlderLibrary)


@needs_kernel
def test_bidirectional_without_the_pair_entry_points(monkeypatch):
    """A library built from a source before the pair calls (what benchmarks/bench_kernel_ab.py loads to compare
    against) runs the two directions one after the other, with the same results."""
    dirs, z = _directions(2, 40, 17, 8, 0, OPTS, torch.float32, "model")
    leaves = _leaves(dirs, z)
    g = torch.randn(2, 40, 17, generator=torch.Generator().manual_seed(5))
    paired = selective_scan_bidirectional(*dirs, z, True, backend="cpu")
    paired_g = torch.autograd.grad(paired, leaves, g)
    _without_pair_entry_points(monkeypatch)
    single = selective_scan_bidirectional(*dirs, z, True, backend="cpu")
    assert torch.equal(single, paired)
    for a, b in zip(torch.autograd.grad(single, leaves, g), paired_g):
        assert torch.equal(a, b)


@needs_kernel
@pytest.mark.parametrize("reverse", DIRS)
def test_several_parts_per_group(reverse):
    # 288 channels in one group: 18 blocks, three tasks per sequence whose dB / dC partials are summed
    check(9, 8, 0, OPTS, reverse, dim=288, batch=2)


@needs_kernel
@pytest.mark.parametrize("reverse", DIRS)
@pytest.mark.parametrize("groups", LAYOUTS)
def test_model_layout_views(groups, reverse):
    """Channels-innermost views as the mixer passes them; out and the gradients keep that layout."""
    check(17, 8, groups, OPTS, reverse, layout="model")
    x, softplus = make_inputs(2, 40, 17, 8, groups, OPTS, layout="model")
    out, last = run(selective_scan, x, softplus, reverse, backend="cpu")
    assert out.stride(1) == 1  # (batch, L, dim) memory: the out_proj that follows reads it in place
    (du, dz) = torch.autograd.grad(out.sum(), [x["u"], x["z"]])
    assert du.stride(1) == 1 and dz.stride(1) == 1


@needs_kernel
@pytest.mark.parametrize("reverse", DIRS)
def test_matches_reference(reverse):
    x, softplus = make_inputs(3, 48, 41, 16, 0, OPTS)
    g = torch.Generator().manual_seed(2)
    gout, glast = torch.randn(3, 48, 41, generator=g), torch.randn(3, 48, 16, generator=g)
    res = {}
    for backend in ("reference", "cpu"):
        out, last = run(selective_scan, x, softplus, reverse, backend=backend)
        res[backend] = (out, last, *grads(x, out, last, gout, glast)[1])
    for a, b in zip(res["cpu"], res["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_no_grad_path_and_grad_subset():
    x, softplus = make_inputs(2, 40, 9, 16, 2, OPTS)
    with torch.no_grad():
        out_ng, last_ng = run(selective_scan, x, softplus, False, backend="cpu")
    assert not out_ng.requires_grad
    out, last = run(selective_scan, x, softplus, False, backend="cpu")
    torch.testing.assert_close(out_ng, out.detach(), rtol=0, atol=0)
    torch.testing.assert_close(last_ng, last.detach(), rtol=0, atol=0)
    # only u and the initial state ask for gradients: the others get none and the result is unchanged
    args = {k: (v.detach() if v is not None else None) for k, v in x.items()}
    args["u"].requires_grad_()
    args["initial_state"].requires_grad_()
    o, l_ = run(selective_scan, args, softplus, False, backend="cpu")
    du, dh0 = torch.autograd.grad(o.sum() + l_.sum(), [args["u"], args["initial_state"]])
    du_all, dh0_all = torch.autograd.grad(out.sum() + last.sum(), [x["u"], x["initial_state"]])
    torch.testing.assert_close(du, du_all, rtol=0, atol=0)
    torch.testing.assert_close(dh0, dh0_all, rtol=0, atol=0)


@needs_kernel
def test_bitwise_deterministic_for_any_thread_count():
    x, softplus = make_inputs(4, 288, 33, 16, 0, OPTS)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 1, 3):
            torch.set_num_threads(n)
            out, last = run(selective_scan, x, softplus, True, backend="cpu")
            results.append([out, last, *grads(x, out, last, torch.ones_like(out), torch.ones_like(last))[1]])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@needs_kernel
def test_bidirectional_bitwise_deterministic_for_any_thread_count():
    dirs, z = _directions(4, 288, 33, 16, 0, OPTS, torch.float32, "model")
    g = torch.randn(4, 288, 33, generator=torch.Generator().manual_seed(2))
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out = selective_scan_bidirectional(*dirs, z, True, backend="cpu")
            results.append([out, *torch.autograd.grad(out, _leaves(dirs, z), g)])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@needs_kernel
def test_threads_are_torchs_openmp_workers_or_the_kernels_own():
    """With torch on OpenMP (Linux) the kernels' threads are torch's own workers (its runtime's GOMP_parallel);
    on threads of the kernels' own (no OpenMP runtime found) the scan and the conv give bitwise the same."""
    if sys.platform == "linux" and "parallel backend: OpenMP" in torch.__config__.parallel_info():
        assert cpu.threading_runtime().startswith("OpenMP (")
    x, softplus = make_inputs(4, 288, 33, 16, 0, OPTS)
    xc = torch.randn(4, 33, 96, generator=torch.Generator().manual_seed(1))[..., :48].transpose(1, 2)
    xc = xc.detach().requires_grad_()
    conv_params = [torch.randn(48, 4).requires_grad_(), torch.randn(48).requires_grad_()] * 2
    lib, runtime, threads = cpu.library(), cpu._openmp_runtime(), torch.get_num_threads()
    results = []
    try:
        torch.set_num_threads(3)
        for parallel in (runtime[1] if runtime else None, None):
            lib.hs_set_openmp(parallel)
            out, last = run(selective_scan, x, softplus, True, backend="cpu")
            convs = causal_conv1d_bidirectional(xc, *conv_params, backend="cpu")
            results.append([out, last, *grads(x, out, last, torch.ones_like(out), torch.ones_like(last))[1], *convs,
                            *torch.autograd.grad(convs, [xc, *conv_params], [torch.ones_like(c) for c in convs])])
    finally:
        lib.hs_set_openmp(runtime[1] if runtime else None)
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_kernel
def test_double_backward_raises():
    x, _ = make_inputs(1, 4, 5, 16, 0, ())
    out = selective_scan(*[x[k] for k in ("u", "delta", "A", "B", "C")], backend="cpu")
    (du,) = torch.autograd.grad(out.square().sum(), [x["u"]], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|twice"):
        du.sum().backward()


@needs_kernel
def test_bad_shapes_raise_instead_of_reading_out_of_bounds():
    x, _ = make_inputs(2, 8, 5, 4, 0, ("D",))
    args = [x[k].detach() for k in ("u", "delta", "A", "B", "C")]
    with pytest.raises(ValueError, match="delta must be"):
        selective_scan(args[0], args[1][:, :, :4], *args[2:], backend="cpu")
    with pytest.raises(ValueError, match="B and C"):
        selective_scan(*args[:3], args[3][:, :, :4], args[4], backend="cpu")
    with pytest.raises(ValueError, match="D must be"):
        selective_scan(*args, D=torch.ones(7), backend="cpu")
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(args[0], args[1], args[2][:, :3], *args[3:], backend="cpu")


# ---- dispatch --------------------------------------------------------------------------------------------------
@needs_kernel
def test_auto_picks_cpu_on_cpu_tensors(monkeypatch):
    calls = []
    real = cpu.selective_scan_cpu
    monkeypatch.setattr(cpu, "selective_scan_cpu", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, _ = make_inputs(1, 4, 5, 16, 0, ("D",))
    selective_scan(*[x[k].detach() for k in ("u", "delta", "A", "B", "C", "D")])
    assert calls == [1]
    assert dispatch.resolve_backend("auto", x["u"]) == "cpu"


@pytest.mark.parametrize("env", ["reference", "cpu", "triton", "mamba_ssm", "auto"])
def test_environment_chooses_the_backend_of_auto(env, monkeypatch):
    monkeypatch.setenv("HYBRIDSEARCH_SCAN_BACKEND", env)
    u = torch.zeros(1, 4, 3)
    want = env if env != "auto" else ("cpu" if cpu.available() else "reference")
    assert dispatch.resolve_backend("auto", u) == want
    assert dispatch.resolve_backend("reference", u) == "reference"  # an explicit backend wins


def test_environment_with_an_unknown_backend_fails(monkeypatch):
    monkeypatch.setenv("HYBRIDSEARCH_SCAN_BACKEND", "gpu")
    with pytest.raises(ValueError, match="HYBRIDSEARCH_SCAN_BACKEND='gpu' is not a selective_scan backend"):
        dispatch.resolve_backend("auto", torch.zeros(1, 4, 3))


def test_unbuildable_kernel_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(cpu, "_state", {"error": "c++ failed on cpu.cpp: error: boom"})
    x, _ = make_inputs(1, 4, 5, 16, 0, ("D",))
    args = [x[k].detach() for k in ("u", "delta", "A", "B", "C", "D")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = selective_scan(*args)
        selective_scan(*args)
        causal_conv1d(args[0], torch.ones(4, 4))
    assert [str(w.message) for w in caught] == [
        "the cpu selective scan is unavailable (c++ failed on cpu.cpp: error: boom); using the reference backend"]
    torch.testing.assert_close(out, ref.selective_scan_reference(*args), rtol=0, atol=0)
    with pytest.raises(cpu.CpuScanUnavailable, match="boom"):
        selective_scan(*args, backend="cpu")


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300, cwd=REPO)


SCAN_ONCE = ("import torch; from hybridsearch.kernels import selective_scan; x = torch.randn(1, 4, 5); "
             "selective_scan(x, x, -torch.ones(4, 2), torch.ones(1, 2, 5), torch.ones(1, 2, 5)); "
             "from hybridsearch.kernels.selective_scan import cpu; print(cpu.available())")


@pytest.mark.parametrize("cxx", ["/nonexistent/c++", "false"], ids=["no-compiler", "failing-compiler"])
def test_without_a_compiler_auto_warns_one_line(tmp_path, cxx):
    proc = _python(SCAN_ONCE, {"CXX": cxx, "HYBRIDSEARCH_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "ScanBackendWarning" in lines[0] and "using the reference backend" in lines[0], lines


@needs_kernel
def test_concurrent_processes_build_once_and_reuse_it(tmp_path):
    env = {"HYBRIDSEARCH_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", SCAN_ONCE], env={**os.environ, **env}, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 and o.strip() == "True" for p, (o, _) in zip(procs, outs)), outs
    built = list((tmp_path / "kernels").glob("*.so"))
    assert len(built) == 1 and not list((tmp_path / "kernels").glob("*.tmp"))
    mtime = built[0].stat().st_mtime_ns
    proc = _python(SCAN_ONCE, env)  # a later process loads it as it is
    assert proc.returncode == 0 and proc.stdout.strip() == "True"
    assert built[0].stat().st_mtime_ns == mtime


# The vector width follows the build's target (-march=native): each width this CPU can run, built for it here.
WIDTH_FLAGS = {16: ("-mavx512f", "-mavx512dq", "-mavx2", "-mfma"), 8: ("-mavx2", "-mfma"), 4: ()}


@needs_kernel
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 vector extensions")
@pytest.mark.parametrize("width", sorted(WIDTH_FLAGS), ids=lambda w: f"W{w}")
def test_every_vector_width_matches_float64(width, tmp_path, monkeypatch):
    need = {16: "avx512f", 8: "avx2"}.get(width)
    if need and need not in cpu._cpu_signature().split():  # the CPU flags the build keys on
        pytest.skip(f"this CPU has no {need}")
    so = tmp_path / f"scan-w{width}.so"
    flags = [f for f in cpu.FLAGS if f != "-march=native"] + ["-march=x86-64", *WIDTH_FLAGS[width]]
    subprocess.run([cpu._compiler(), *flags, "-o", str(so), str(cpu.SOURCE)], check=True, capture_output=True)
    lib = cpu._load(so)
    assert lib.hs_scan_vector_width() == width
    monkeypatch.setitem(cpu._state, "lib", lib)
    for L, N, groups, opts, reverse in [(33, 22, 0, OPTS, False), (130, 4, 2, OPTS, True), (7, 16, 0, (), True)]:
        check(L, N, groups, opts, reverse, dim=40, layout="model" if reverse else "contiguous")
    check(17, 8, 0, OPTS, False, dtype=torch.bfloat16)
    test_conv_matches_float64(3, 40, 17, 4, True, True, "model")


# ---- the conv ---------------------------------------------------------------------------------------------------
@needs_kernel
@pytest.mark.parametrize("reverse", DIRS)
@pytest.mark.parametrize("silu", [False, True], ids=["linear", "silu"])
@pytest.mark.parametrize("K", [1, 3, 4], ids=lambda v: f"K{v}")
@pytest.mark.parametrize(("B", "E", "L"), [(2, 5, 1), (3, 40, 17), (1, 33, 300)], ids=lambda v: str(v))
@pytest.mark.parametrize("layout", ["contiguous", "model"])
def test_conv_matches_float64(B, E, L, K, silu, reverse, layout):
    g = torch.Generator().manual_seed(0)
    if layout == "contiguous":
        x = torch.randn(B, E, L, generator=g)
    else:  # the x half of the mixer's (B, L, 2E) projection, as a (B, E, L) view
        x = torch.randn(B, L, 2 * E, generator=g)[..., :E].transpose(1, 2)
    x = x.detach().requires_grad_()
    w, b = torch.randn(E, 1, K, generator=g).requires_grad_(), torch.randn(E, generator=g).requires_grad_()
    out = causal_conv1d(x, w, b, silu=silu, reverse=reverse, backend="cpu")
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    want = causal_conv1d_reference(x64, w64.squeeze(1), b64, silu, reverse)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    if layout == "model":
        assert out.stride(1) == 1
    gout = torch.randn(B, E, L, generator=g)
    got = torch.autograd.grad((out * gout).sum(), [x, w, b])
    exp = torch.autograd.grad((want * gout.double()).sum(), [x64, w64, b64])
    for a, e, name in zip(got, exp, ("dx", "dw", "dbias")):
        assert a.shape == e.shape, name
        torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-5 * max(1.0, e.abs().max().item()),
                                   msg=lambda m, name=name: f"{name}: {m}")


@needs_kernel
def test_conv_half_inputs_and_determinism():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 33, generator=g).bfloat16().requires_grad_()
    w, b = torch.randn(64, 4, generator=g).requires_grad_(), torch.randn(64, generator=g).requires_grad_()
    runs = []
    for _ in range(2):
        out = causal_conv1d(x, w, b, reverse=True, backend="cpu")
        runs.append([out, *torch.autograd.grad(out.float().sum(), [x, w, b])])
    assert runs[0][0].dtype == torch.bfloat16 and runs[0][1].dtype == torch.bfloat16
    for a, c in zip(*runs):
        assert torch.equal(a, c)
    want = causal_conv1d_reference(x.detach().double(), w.detach().double(), b.detach().double(), True, True)
    torch.testing.assert_close(runs[0][0].double(), want, rtol=2e-2, atol=2e-2)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("used", ["both", "forward-only"])
@pytest.mark.parametrize("widths", [(4, 4), (4, 3)], ids=["K4", "K4-K3"])
def test_conv_bidirectional_equals_two_convs(widths, used, dtype):
    """Vim's two convs of one x as one node: the same outputs and gradients as two calls (x's summed in the
    kernel), also when only one direction's output reaches the loss, and with kernels of two widths."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 17, 80, generator=g)[..., :40].to(dtype).transpose(1, 2).detach().requires_grad_()
    params = [t.requires_grad_() for t in (torch.randn(40, widths[0], generator=g), torch.randn(40, generator=g),
                                           torch.randn(40, widths[1], generator=g), torch.randn(40, generator=g))]
    gouts = [torch.randn(3, 40, 17, generator=g).to(dtype) for _ in range(2)]

    def grads(outs):
        loss = sum((o.float() * go.float()).sum() for o, go in zip(outs[: 1 if used == "forward-only" else 2], gouts))
        return torch.autograd.grad(loss, [x, *params], allow_unused=True)

    fused = causal_conv1d_bidirectional(x, *params, backend="cpu")
    two = (causal_conv1d(x, *params[:2], backend="cpu"), causal_conv1d(x, *params[2:], reverse=True, backend="cpu"))
    assert fused[0].stride(1) == 1 and fused[0].dtype == dtype  # channels innermost, as x
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    for a, b in zip(fused, two):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(grads(fused), grads(two)):
        if b is None:
            assert a is None or not a.abs().sum()
            continue
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))
    want = [causal_conv1d_reference(x.detach().double(), *(p.detach().double() for p in params[i:i + 2]), True, r)
            for i, r in ((0, False), (2, True))]
    for a, b in zip(fused, want):
        torch.testing.assert_close(a.double(), b, rtol=tol * 10, atol=tol * 10)


@needs_kernel
@pytest.mark.parametrize("silu", [False, True], ids=["linear", "silu"])
def test_conv_bidirectional_without_the_pair_entry_points(monkeypatch, silu):
    """The conv pair's one kernel call each way (x read once, the x gradients summed in scratch) against a library
    without the pair calls, which runs the two directions in turn (the second adding onto the first's dx)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 21, 48, generator=g)[..., :24].transpose(1, 2).detach().requires_grad_()
    params = [t.requires_grad_() for t in (torch.randn(24, 4, generator=g), torch.randn(24, generator=g),
                                           torch.randn(24, 4, generator=g), torch.randn(24, generator=g))]
    gouts = [torch.randn(3, 24, 21, generator=g) for _ in range(2)]

    def run():
        outs = causal_conv1d_bidirectional(x, *params, silu=silu, backend="cpu")
        return outs, torch.autograd.grad(outs, [x, *params], gouts)

    paired = run()
    _without_pair_entry_points(monkeypatch)
    single = run()
    for a, b in zip([*paired[0], *paired[1]], [*single[0], *single[1]]):
        assert torch.equal(a, b)


@needs_kernel
def test_conv_pair_kernel_checks_its_shapes():
    x, w = torch.randn(2, 8, 6), torch.randn(8, 4)
    a, _ = conv_wrapper._forward_args(x, w, None, True, False)
    b, _ = conv_wrapper._forward_args(torch.randn(2, 8, 7), w, None, True, True)
    with pytest.raises(ValueError, match="conv need one shape"):
        cpu.run_kernel("hs_conv_forward", a, b)


def test_conv_backend_follows_the_scan_backend(monkeypatch):
    monkeypatch.setenv("HYBRIDSEARCH_SCAN_BACKEND", "reference")
    x, w = torch.randn(2, 8, 6), torch.randn(8, 4)
    out = causal_conv1d(x, w, reverse=True)
    torch.testing.assert_close(out, causal_conv1d_reference(x, w, None, True, True), rtol=0, atol=0)


def test_outputs_take_their_inputs_layout():
    """empty_like_layout: a dense tensor's own strides (any axis order), a channels-innermost view (a half of the
    mixer's projection) as a transposed (batch, L, C) block, anything else contiguous."""
    proj = torch.randn(2, 7, 10)  # (batch, L, 2E)
    cases = {
        "contiguous": torch.randn(2, 5, 7),
        "channels innermost, dense": torch.randn(2, 7, 5).transpose(1, 2),
        "channels innermost, a half of the projection": proj[..., :5].transpose(1, 2),
        "dense, (L, batch, dim) in memory": torch.randn(7, 2, 5).permute(1, 2, 0),
        "broadcast": torch.randn(1, 5, 7).expand(2, 5, 7),
        "empty": torch.randn(0, 5, 7),
    }
    expected = {
        "contiguous": (35, 7, 1),
        "channels innermost, dense": (35, 1, 5),
        "channels innermost, a half of the projection": (35, 1, 5),
        "dense, (L, batch, dim) in memory": (5, 1, 10),
        "broadcast": (35, 7, 1),
        "empty": (35, 7, 1),
    }
    for name, t in cases.items():
        out = cpu.empty_like_layout(t)
        assert out.shape == t.shape and out.dtype == t.dtype, name
        assert out.stride() == expected[name], (name, out.stride())
        assert cpu.empty_like_layout(t, torch.bfloat16).dtype == torch.bfloat16
