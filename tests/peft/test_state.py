"""State-based tuning against its definition (Kang et al., 2025), written as a float64 loop over positions:

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,  h_0 = the trained initial state (init_state) or 0
    y_t = (C_t . (h_t + h') + D u_t + y') silu(z_t)   (h': state_offset, y': output_offset)

on both model kinds and both Vim directions, alone and together with Additional-scan, whose extra states start at
zero and get no offset."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

from hybridsearch import apply_peft, count_config
from hybridsearch.kernels import causal_conv1d
from hybridsearch.kernels.selective_scan import dense_delta

STATE = ("state_offset", "output_offset", "init_state")


def _loop(mixer: torch.nn.Module, x: torch.Tensor, z: torch.Tensor, d: str) -> torch.Tensor:
    """The definition, from the mixer's own conv output and SSM inputs (which the state methods do not change)."""
    u = causal_conv1d(x, mixer.eff("conv1d.weight", d), mixer.eff("conv1d.bias", d), reverse=d == "b",
                      backend="reference")
    s = mixer._ssm_inputs(u, d)
    peft = mixer.peft
    E, N = mixer.d_inner, mixer.d_state
    h_off = peft["state_offset"].h[d].double() if "state_offset" in peft else torch.zeros(E, N, dtype=torch.float64)
    y_off = peft["output_offset"].y[d].double() if "output_offset" in peft else torch.zeros(E, dtype=torch.float64)
    h = torch.zeros(u.shape[0], E, s.A.shape[1], dtype=torch.float64)
    if "init_state" in peft:
        n_extra = s.A.shape[1] - N  # Additional-scan's prefix columns come first
        h[:, :, n_extra:] = peft["init_state"].h0[d].double()
    delta = F.softplus(dense_delta(s.delta, s.delta_proj).double() + mixer.eff("dt_proj.bias", d).double()[:, None])
    A, B, C, Cb = s.A.double(), s.B.double(), s.C.double(), s.C_base.double()
    D = mixer.eff("D", d).double()
    ys = [None] * u.shape[-1]
    for t in reversed(range(u.shape[-1])) if d == "b" else range(u.shape[-1]):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None].double()
        y = (h * C[:, None, :, t]).sum(-1) + (h_off * Cb[:, None, :, t]).sum(-1) + D * u[:, :, t].double() + y_off
        ys[t] = y * F.silu(z[:, :, t].double())
    return torch.stack(ys, -1)


CASES = [(kind, methods) for kind in ("lm", "vim") for methods in (("state_offset",), ("output_offset",),
                                                                    ("init_state",), STATE)]
CASES.append(("vim", (*STATE, "additional_scan")))


@pytest.mark.parametrize(("kind", "methods"), CASES, ids=[f"{k}-{'+'.join(m)}" for k, m in CASES])
def test_scan_output_matches_the_definition(kind, methods):
    model = apply_peft(tiny_model(kind), {"methods": {m: {"states": 2} if m == "additional_scan" else {}
                                                     for m in methods}})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    mixer = model.mixers[1]
    mixer.scan_backend = "reference"
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(2, 2, mixer.d_inner, 9, generator=g).unbind(0)
    for d in mixer.directions:
        with torch.no_grad():
            got = mixer._scan_direction(x, z, d, reverse=d == "b")
            want = _loop(mixer, x, z, d)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_each_offset_changes_the_output():
    """Not vacuous: each method alone moves the scan's output (the loop above would agree with a dead method)."""
    for name in STATE:
        model = apply_peft(tiny_model("lm"), {"methods": {name: {}}})
        mixer = model.mixers[0]
        x, z = torch.randn(2, 2, mixer.d_inner, 5).unbind(0)
        with torch.no_grad():
            before = mixer._scan_direction(x, z, "f")
            next(iter(mixer.peft[name].parameters())).fill_(0.3)
            assert (mixer._scan_direction(x, z, "f") - before).abs().max() > 1e-3, name


def test_vim_small_counts():
    # Vim-S: E 768, N 16, 24 layers x 2 directions
    by = count_config("vim-small", {"methods": dict.fromkeys(STATE, {})})["by_method"]
    assert by == {"state_offset": 48 * 768 * 16, "output_offset": 48 * 768, "init_state": 48 * 768 * 16}
