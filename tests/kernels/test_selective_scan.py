"""Reference selective scan vs. the naive float64 loop: outputs, last state and every input gradient."""

from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch

from hybridsearch.kernels import selective_scan
from hybridsearch.kernels.selective_scan.naive import naive_selective_scan

# `hybridsearch.kernels.selective_scan` as an attribute is the function (re-exported), so fetch modules by name.
dispatch_mod = importlib.import_module("hybridsearch.kernels.selective_scan")
ref_mod = importlib.import_module("hybridsearch.kernels.selective_scan.reference")
selective_scan_reference = ref_mod.selective_scan_reference

OPTS = ("z", "D", "bias", "softplus", "init")
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def make_inputs(batch, dim, L, N, groups, opts, dtype=torch.float32, seed=0):
    """groups=0 means 3-D B/C (batch, N, L); otherwise 4-D (batch, groups, N, L)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dt)

    bc_shape = (batch, N, L) if groups == 0 else (batch, groups, N, L)
    softplus = "softplus" in opts
    if softplus:
        delta = rnd(batch, dim, L, scale=1.0, shift=-1.0)
        delta[0, 0, 0] = 25.0  # above softplus' threshold: identity branch, derivative exactly 1
    else:
        delta = (torch.rand(batch, dim, L, generator=g) * 0.5 + 0.05).to(dtype)
    t = {
        "u": rnd(batch, dim, L),
        "delta": delta,
        "A": -(torch.rand(dim, N, generator=g) * 1.5 + 0.1),
        "B": rnd(*bc_shape),
        "C": rnd(*bc_shape),
        "D": rnd(dim) if "D" in opts else None,
        "z": rnd(batch, dim, L) if "z" in opts else None,
        "delta_bias": rnd(dim, scale=0.1, dt=torch.float32) if "bias" in opts else None,
        "initial_state": rnd(batch, dim, N, dt=torch.float32) if "init" in opts else None,
    }
    return {k: (v.requires_grad_() if v is not None else None) for k, v in t.items()}, softplus


def check(L, N, groups, opts, reverse, dtype=torch.float32, batch=2, dim=4, use_out=True, use_last=True):
    x, softplus = make_inputs(batch, dim, L, N, groups, opts, dtype)
    x64 = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in x.items()}
    g = torch.Generator().manual_seed(1)
    gout, glast = torch.randn(batch, dim, L, generator=g), torch.randn(batch, dim, N, generator=g)

    out, last = selective_scan_reference(
        x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], softplus,
        return_last_state=True, initial_state=x["initial_state"], reverse=reverse,
    )
    assert out.dtype == dtype and out.shape == (batch, dim, L)
    assert last.dtype == torch.float32 and last.shape == (batch, dim, N)
    ref_out, ref_last = naive_selective_scan(
        x64["u"], x64["delta"], x64["A"], x64["B"], x64["C"], x64["D"], x64["z"], x64["delta_bias"], softplus,
        return_last_state=True, initial_state=x64["initial_state"], reverse=reverse,
    )
    if dtype == torch.float32:
        rtol, atol = 1e-4, 1e-5
    else:  # bf16 output and gradients are rounded once: ~3 significant digits
        rtol, atol = 2e-2, 2e-2

    def close(a, b, what):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")

    close(out, ref_out, "out")
    close(last, ref_last, "last_state")

    loss = (out.float() * gout).sum() * use_out + (last * glast).sum() * use_last
    loss64 = (ref_out * gout.double()).sum() * use_out + (ref_last * glast.double()).sum() * use_last
    names = [k for k in NAMES if x[k] is not None]
    grads = torch.autograd.grad(loss, [x[k] for k in names])
    grads64 = torch.autograd.grad(loss64, [x64[k] for k in names])
    for k, gr, gr64 in zip(names, grads, grads64):
        assert gr.dtype == x[k].dtype and gr.shape == x[k].shape, k
        close(gr, gr64, f"grad {k}")


LAYOUTS = [pytest.param(0, id="G1-3d"), pytest.param(2, id="G2-4d")]
DIRS = [pytest.param(False, id="fwd"), pytest.param(True, id="rev")]


@pytest.mark.parametrize("reverse", DIRS)
@pytest.mark.parametrize("opts", [pytest.param((), id="plain"), pytest.param(OPTS, id="all")])
@pytest.mark.parametrize("groups", LAYOUTS)
@pytest.mark.parametrize("L", [1, 7, 33], ids=lambda v: f"L{v}")
@pytest.mark.parametrize("N", [16, 22], ids=lambda v: f"N{v}")
def test_matches_float64(N, L, groups, opts, reverse):
    check(L, N, groups, opts, reverse)


@pytest.mark.parametrize("reverse", DIRS)
@pytest.mark.parametrize("opt", OPTS)
def test_single_option(opt, reverse):
    check(7, 16, 2, (opt,), reverse)


@pytest.mark.parametrize("reverse", DIRS)
@pytest.mark.parametrize("chunk", [1, 5, 8], ids=lambda v: f"chunk{v}")
def test_chunked_matches_float64(chunk, reverse, monkeypatch):
    # Force several chunks (the last one partial) so chunk-boundary states and gradient carries are used.
    monkeypatch.setattr(ref_mod, "_TILE_ELEMS", 1)
    monkeypatch.setattr(ref_mod, "_MIN_CHUNK", chunk)
    assert ref_mod._plan(2, 33, 88) == (chunk, 1)
    check(33, 22, 2, OPTS, reverse)


@pytest.mark.parametrize("reverse", DIRS)
def test_batch_tiles_matches_float64(reverse, monkeypatch):
    # 3 sequences in tiles of 2 (the last one partial) and chunks of 5 positions.
    monkeypatch.setattr(ref_mod, "_TILE_ELEMS", 5 * 2 * 4 * 22)
    monkeypatch.setattr(ref_mod, "_MIN_CHUNK", 5)
    assert ref_mod._plan(3, 33, 4 * 22) == (5, 2)
    check(33, 22, 2, OPTS, reverse, batch=3)


@pytest.mark.parametrize("reverse", DIRS)
@pytest.mark.parametrize("groups", LAYOUTS)
def test_bf16(groups, reverse):
    check(33, 16, groups, OPTS, reverse, dtype=torch.bfloat16)


@pytest.mark.parametrize(
    "use", [pytest.param((True, False), id="out-only"), pytest.param((False, True), id="last-only")]
)
def test_partial_upstream(use):
    check(7, 16, 2, OPTS, False, use_out=use[0], use_last=use[1])


def test_grad_subset_and_no_grad_path():
    x, softplus = make_inputs(2, 4, 9, 16, 2, OPTS)
    args = [x[k] for k in NAMES[:8]]
    for t in args:
        t.requires_grad_(False)
    x["u"].requires_grad_()
    out, last = selective_scan_reference(*args, softplus, True, initial_state=x["initial_state"].detach())
    (du,) = torch.autograd.grad(out.sum() + last.sum(), [x["u"]])
    with torch.no_grad():
        out_ng, last_ng = selective_scan_reference(*args, softplus, True, initial_state=x["initial_state"])
    assert not out_ng.requires_grad
    torch.testing.assert_close(out_ng, out.detach(), rtol=0, atol=0)
    torch.testing.assert_close(last_ng, last.detach(), rtol=0, atol=0)
    u64 = x["u"].detach().double().requires_grad_()
    a64 = [u64] + [t.detach().double() if t is not None else None for t in args[1:]]
    o64, l64 = naive_selective_scan(*a64, softplus, True, initial_state=x["initial_state"].detach().double())
    (du64,) = torch.autograd.grad(o64.sum() + l64.sum(), [u64])
    torch.testing.assert_close(du.double(), du64, rtol=1e-4, atol=1e-5)


def test_double_backward_raises():
    x, _ = make_inputs(1, 4, 5, 16, 0, ())
    out = selective_scan_reference(*[x[k] for k in ("u", "delta", "A", "B", "C")])
    (du,) = torch.autograd.grad(out.square().sum(), [x["u"]], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|twice"):
        du.sum().backward()


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_dispatch_cpu_goes_to_reference(backend, monkeypatch):
    # auto picks the fused cpu backend when it builds (test_selective_scan_cpu.py); the environment can say no
    monkeypatch.setenv("HYBRIDSEARCH_SCAN_BACKEND", "reference")
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return selective_scan_reference(*args, **kwargs)

    monkeypatch.setattr(dispatch_mod, "selective_scan_reference", spy)
    x, _ = make_inputs(1, 4, 5, 16, 0, ("D",))
    args = [x[k].detach() for k in ("u", "delta", "A", "B", "C", "D")]
    out = selective_scan(*args, reverse=True, backend=backend)
    assert len(calls) == 1 and calls[0]["reverse"] is True
    torch.testing.assert_close(out, selective_scan_reference(*args, reverse=True), rtol=0, atol=0)


def test_unknown_backend_raises():
    x, _ = make_inputs(1, 4, 5, 16, 0, ())
    with pytest.raises(ValueError, match="unknown selective_scan backend"):
        selective_scan(*[x[k] for k in ("u", "delta", "A", "B", "C")], backend="cuda-magic")


def test_mamba_ssm_backend_needs_mamba_ssm(monkeypatch):
    from hybridsearch.errors import ConfigError

    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # as on a machine without the GPU extra
    x, _ = make_inputs(1, 4, 5, 16, 0, ())
    with pytest.raises(ConfigError, match=r"needs mamba-ssm with CUDA \(pip install 'hybridsearch\[gpu\]'\)"):
        selective_scan(*[x[k] for k in ("u", "delta", "A", "B", "C")], backend="mamba_ssm")


@pytest.mark.parametrize("last", [False, True])
def test_mamba_ssm_backend_serves_reverse_by_flipping(monkeypatch, last):
    """mamba-ssm's selective_scan_fn has no reverse and no initial state: the backend flips, or refuses."""
    from hybridsearch.errors import ConfigError

    def forward_only(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                     return_last_state=False):  # mamba_ssm's signature, computed by the reference
        return selective_scan_reference(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                        delta_softplus=delta_softplus, return_last_state=return_last_state)

    iface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    iface.selective_scan_fn = forward_only
    for name in ("mamba_ssm", "mamba_ssm.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, iface.__name__, iface)
    x, _ = make_inputs(2, 4, 7, 16, 0, ("D", "z", "bias", "softplus"))
    args = [x[k].detach() for k in ("u", "delta", "A", "B", "C", "D")]
    kw = {"z": x["z"].detach(), "delta_bias": x["delta_bias"].detach(), "delta_softplus": True,
          "return_last_state": last, "reverse": True}
    got = selective_scan(*args, backend="mamba_ssm", **kw)
    want = selective_scan_reference(*args, **kw)
    for g, w in zip(got if last else [got], want if last else [want], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="has no initial_state"):
        selective_scan(*args, backend="mamba_ssm", initial_state=torch.zeros(2, 4, 16))
