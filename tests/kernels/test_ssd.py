"""The SSD scan (Mamba-2): every backend against the naive float64 loop (outputs, final state and every input
gradient) on lengths that are no multiple of the chunk, several chunk sizes, groups, an initial state, D per head or
per channel, dt options; then the dispatch, bad shapes and the optional mamba_ssm backend."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from hybridsearch.errors import ConfigError
from hybridsearch.kernels.ssd import CPU_MAX_N, resolve_backend, ssd_scan
from hybridsearch.kernels.ssd.naive import naive_ssd_scan

ssd_mod = importlib.import_module("hybridsearch.kernels.ssd")
NAMES = ("x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state")
# relative to the largest magnitude of the float64 result; fp32 measured 1e-7 to 1e-6 (outputs, states, gradients)
TOL = 2e-5


def cpu_kernel() -> bool:
    from hybridsearch.kernels.selective_scan.cpu import available

    return available()


BACKENDS = ["reference", pytest.param("cpu", marks=pytest.mark.skipif(not cpu_kernel(), reason="no C++ compiler"))]


def make_inputs(batch=2, L=13, H=4, P=3, G=2, N=5, D="head", bias=True, init=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dtype)

    dt = rnd(batch, L, H, shift=-1.0)
    dt[0, 0, 0] = 25.0  # above softplus' threshold: its identity branch
    t = {
        "x": rnd(batch, L, H, P), "dt": dt, "A": -(torch.rand(H, generator=g) * 2 + 0.1),
        "B": rnd(batch, L, G, N), "C": rnd(batch, L, G, N),
        "D": {"head": rnd(H), "channel": rnd(H, P), None: None}[D],
        "dt_bias": rnd(H, scale=0.5) if bias else None,
        "initial_state": torch.randn(batch, H, P, N, generator=g) if init else None,
    }
    return {k: None if v is None else v.requires_grad_() for k, v in t.items()}


def check(backend: str, inputs: dict, tol: float = TOL, **opts) -> None:
    """Outputs, final state and the gradient of every input that has one, against the float64 loop."""
    args = [inputs[n] for n in NAMES]
    y, h = ssd_scan(*args[:6], dt_bias=args[6], initial_state=args[7], return_final_state=True, backend=backend,
                    **opts)
    opts.pop("chunk_size", None)
    y64, h64 = naive_ssd_scan(*args[:6], dt_bias=args[6], initial_state=args[7], return_final_state=True, **opts)
    assert y.dtype == inputs["x"].dtype and y.shape == inputs["x"].shape
    assert h.dtype == torch.float32 and h.shape == h64.shape

    def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
        scale = max(b.abs().max().item(), 1e-30)
        err = (a.double() - b).abs().max().item() / scale
        assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"

    close(y, y64, "y")
    close(h, h64, "final state")
    g = torch.Generator().manual_seed(1)
    gy, gh = torch.randn(y64.shape, generator=g, dtype=torch.float64), torch.randn(h64.shape, generator=g,
                                                                                   dtype=torch.float64)
    wrt = [(n, t) for n, t in zip(NAMES, args) if t is not None]
    ours = torch.autograd.grad((y.double() * gy).sum() + (h.double() * gh).sum(), [t for _, t in wrt])
    theirs = torch.autograd.grad((y64 * gy).sum() + (h64 * gh).sum(), [t for _, t in wrt])
    for (name, _), a, b in zip(wrt, ours, theirs):
        close(a, b, f"d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("L", "chunk"), [(1, 256), (7, 4), (13, 4), (33, 8), (33, 16), (40, 64), (50, 1)])
def test_against_the_naive_loop(backend, L, chunk):
    """Lengths that are no multiple of the chunk (padded), one chunk, a chunk per position, many chunks."""
    check(backend, make_inputs(L=L), chunk_size=chunk)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("G", [1, 2, 4])
@pytest.mark.parametrize("N", [1, 5, 16])
def test_groups_and_state_sizes(backend, G, N):
    check(backend, make_inputs(L=19, H=4, G=G, N=N), chunk_size=8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["plain", "D-per-channel", "no-bias", "no-softplus", "dt-limit", "dt-limit-no-high",
                                  "bf16"])
def test_each_option(backend, case):
    kw: dict = {"L": 21}
    opts: dict = {"chunk_size": 8}
    tol = TOL
    if case == "plain":
        kw.update(D=None, bias=False, init=False)
    elif case == "D-per-channel":
        kw.update(D="channel")
    elif case == "no-bias":
        kw.update(bias=False)
    elif case == "no-softplus":  # raw dt is clamped at dt_limit's low bound 0 (mamba_ssm's kernels always clamp)
        opts["dt_softplus"] = False
    elif case == "dt-limit":  # both bounds bite: their gradient is zero
        opts["dt_limit"] = (0.2, 0.6)
    elif case == "dt-limit-no-high":
        opts["dt_limit"] = (0.3, math.inf)
    else:  # bf16 inputs: fp32 arithmetic, the output rounded once
        kw.update(dtype=torch.bfloat16)
        tol = 2e-2
    check(backend, make_inputs(**kw), tol=tol, **opts)


def test_the_chunk_size_changes_only_rounding():
    t = make_inputs(L=70, init=True)
    args = [t[n] for n in NAMES]
    outs = [ssd_scan(*args[:6], dt_bias=args[6], initial_state=args[7], chunk_size=q, backend="reference")
            for q in (1, 7, 32, 256)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_long_chunk_with_strong_decay_stays_finite(backend):
    """Large dt * A over a 256-long chunk: exp of the segment sums underflows to 0, never inf or NaN."""
    t = make_inputs(L=300, H=2, P=2, G=1, N=4, init=True)
    with torch.no_grad():
        t["dt"].mul_(0).add_(3.0)
        t["A"].mul_(0).add_(-8.0)
    check(backend, t, chunk_size=256)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_grad_and_partial_grads(backend):
    t = make_inputs(L=9)
    with torch.no_grad():
        y = ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], backend=backend, chunk_size=4)
    assert not y.requires_grad
    x = t["x"].detach().requires_grad_()
    y = ssd_scan(x, t["dt"].detach(), t["A"].detach(), t["B"].detach(), t["C"].detach(), backend=backend)
    (gx,) = torch.autograd.grad(y.sum(), [x])
    assert gx.shape == x.shape and torch.isfinite(gx).all()


# -- dispatch ------------------------------------------------------------------------------------------------------
def test_auto_picks_by_device_and_state_size(monkeypatch):
    monkeypatch.delenv("HYBRIDSEARCH_SCAN_BACKEND", raising=False)
    x = torch.zeros(1, 2, 1, 1)
    small = "cpu" if cpu_kernel() else "reference"
    assert resolve_backend("auto", x, CPU_MAX_N) == small
    assert resolve_backend("auto", x, CPU_MAX_N + 1) == "reference"  # measured faster there (docs/kernels.md)
    assert resolve_backend("auto", torch.zeros(1, 2, 1, 1, device="meta"), 4) == "reference"
    assert resolve_backend("reference", x, 4) == "reference"


@pytest.mark.parametrize(("env", "expected"), [("reference", "reference"), ("cpu", "cpu"), ("auto", None),
                                                ("triton", None), ("", None)])
def test_the_environment_variable_chooses(monkeypatch, env, expected):
    monkeypatch.setenv("HYBRIDSEARCH_SCAN_BACKEND", env)
    x = torch.zeros(1, 2, 1, 1)
    own = "cpu" if cpu_kernel() else "reference"
    assert resolve_backend("auto", x, 4) == (expected or own)  # triton is a Mamba-1 backend: SSD chooses its own
    assert resolve_backend("reference", x, 4) == "reference"  # an explicit backend wins


def test_unknown_backends_are_one_line(monkeypatch):
    t = make_inputs(L=3)
    with pytest.raises(ValueError, match="unknown ssd_scan backend 'fast'; allowed: auto, reference, cpu, mamba_ssm"):
        ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], backend="fast")
    monkeypatch.setenv("HYBRIDSEARCH_SCAN_BACKEND", "gpu")
    with pytest.raises(ValueError, match=r"\$HYBRIDSEARCH_SCAN_BACKEND='gpu' is not a scan backend"):
        ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"])


def test_the_reference_runs_when_the_variable_says_so(monkeypatch):
    calls = []
    real = ssd_mod._BACKENDS["reference"]
    monkeypatch.setitem(ssd_mod._BACKENDS, "reference", lambda: (lambda *a, **k: calls.append(1) or real()(*a, **k)))
    monkeypatch.setenv("HYBRIDSEARCH_SCAN_BACKEND", "reference")
    t = make_inputs(L=3)
    ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"])
    assert calls == [1]


BAD_SHAPES = {
    "x-3d": ({"x": torch.zeros(2, 5, 4)}, "x must be (batch, L, heads, headdim)"),
    "dt": ({"dt": torch.zeros(2, 5, 3)}, "dt must be (2, 5, 4); got (2, 5, 3)"),
    "A-matrix": ({"A": torch.zeros(4, 5)}, "A must be (4,); got (4, 5)"),
    "groups": ({"B": torch.zeros(2, 5, 3, 5), "C": torch.zeros(2, 5, 3, 5)}, "G dividing the 4 heads"),
    "C-other": ({"C": torch.zeros(2, 5, 2, 6)}, "B and C must both be"),
    "D": ({"D": torch.zeros(3)}, "D must be (4,) or (4, 3); got (3,)"),
    "dt_bias": ({"dt_bias": torch.zeros(2)}, "dt_bias must be (4,)"),
    "initial_state": ({"initial_state": torch.zeros(2, 4, 3)}, "initial_state must be (2, 4, 3, 5)"),
    "dt_limit": ({"dt_limit": (1.0, 0.5)}, "dt_limit must be (low, high) with low <= high"),
    "chunk": ({"chunk_size": 0}, "chunk_size must be a positive integer"),
}


@pytest.mark.parametrize("case", list(BAD_SHAPES))
def test_bad_shapes_are_one_line(case):
    bad, words = BAD_SHAPES[case]
    t = {k: None if v is None else v.detach() for k, v in make_inputs(L=5).items()}
    args = {**t, **{k: v for k, v in bad.items() if k in t}}
    kw = {k: v for k, v in bad.items() if k not in t}
    with pytest.raises(ValueError, match="ssd_scan: ") as e:
        ssd_scan(args["x"], args["dt"], args["A"], args["B"], args["C"], args["D"], dt_bias=args["dt_bias"],
                 initial_state=args["initial_state"], backend="reference", **kw)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_the_mamba_ssm_backend_names_what_it_needs(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mamba_ssm(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name.split(".")[0] == "mamba_ssm":  # the package, not kernels/ssd/mamba_ssm.py
            raise ImportError("No module named 'mamba_ssm'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_mamba_ssm)
    t = make_inputs(L=3)
    with pytest.raises(ConfigError, match="ssd_scan backend 'mamba_ssm' needs mamba-ssm on a CUDA machine") as e:
        ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], backend="mamba_ssm")
    assert "\n" not in str(e.value)


def test_auto_caps_the_chunk_of_the_reference_on_a_cpu(monkeypatch):
    seen = []
    real = ssd_mod._BACKENDS["reference"]
    monkeypatch.setitem(ssd_mod._BACKENDS, "reference",
                        lambda: (lambda *a, **k: seen.append(k["chunk_size"]) or real()(*a, **k)))
    monkeypatch.delenv("HYBRIDSEARCH_SCAN_BACKEND", raising=False)
    t = {k: None if v is None else v.detach() for k, v in make_inputs(L=5, N=CPU_MAX_N + 1).items()}
    ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=256)
    ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=256, backend="reference")  # explicit: as given
    assert seen == [ssd_mod.CPU_CHUNK, 256]
