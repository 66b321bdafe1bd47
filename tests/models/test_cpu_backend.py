"""Whole models give the same logits and gradients with the fused ``cpu`` backend and the reference.

The mixer runs the backward direction of Vim in reverse (conv and scan) without flipped copies on every backend,
its two directions as one bidirectional call when no method adds a term to a scan's output, and inner prefix
affix tokens as an initial state; the RMSNorms follow the backend too. These cases cover all of it, with PEFT
methods that reach every input of the scan (LoRAp(X), Additional-scan, conv1d-tuning, Affix) and the state
methods' output terms.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from hybridsearch import apply_peft
from hybridsearch.models import MambaConfig, VimConfig, build
from hybridsearch.models.layers import RMSNorm

pytestmark = pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                                reason="no C++ compiler: the cpu backend cannot be built")

VIM = VimConfig(d_model=16, depth=2, img_size=16, patch_size=4, d_state=4, num_classes=5, drop_path_rate=0.0)
LM = MambaConfig(d_model=24, n_layer=2, vocab_size=50, d_state=8)
CASES = {
    "vim": (VIM, None),
    "vim+hybrid": (VIM, {"lora_X": {"rank": 2}, "additional_scan": {"states": 3}, "tune_conv1d": {},
                         "affix": {"tokens": 3, "placement": "dual_prefix"}}),
    "vim+suffix-affix": (VIM, {"affix": {"tokens": 2, "placement": "single_suffix"}, "lora_X": {"rank": 2}}),
    # terms on the scan's output: each direction scanned on its own, then averaged
    "vim+state": (VIM, {"init_state": {}, "state_offset": {}, "output_offset": {}, "lora_X": {"rank": 2}}),
    "lm": (LM, None),
    "lm+hybrid": (LM, {"lora_X": {"rank": 2}, "additional_scan": {"states": 6},
                       "affix": {"tokens": 2, "placement": "single_prefix"}}),
}


def _run(model: torch.nn.Module, x: torch.Tensor, backend: str) -> dict[str, torch.Tensor]:
    for m in model.mixers:
        m.scan_backend = backend
    for m in model.modules():
        if isinstance(m, RMSNorm):
            m.backend = backend
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out * torch.arange(out.numel(), dtype=torch.float32).view_as(out).cos()).sum().backward()
    return {"logits": out.detach(), **{n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}}


@pytest.mark.parametrize("case", list(CASES))
def test_same_logits_and_gradients(case: str, monkeypatch) -> None:
    monkeypatch.delenv("HYBRIDSEARCH_SCAN_BACKEND", raising=False)
    cfg, methods = CASES[case]
    torch.manual_seed(0)
    model = build(cfg)
    if methods is None:
        for p in model.parameters():  # full fine-tuning: every base tensor gets a gradient
            p.requires_grad_(True)
    else:
        model = apply_peft(model, {"methods": methods})
    with torch.no_grad():  # zero-initialised PEFT parts would hide gradient paths
        for name, p in model.named_parameters():
            if p.requires_grad and "peft" in name:
                p.normal_(0, 0.3)
    model.eval()
    x = torch.randn(3, 3, 16, 16) if cfg is VIM else torch.randint(0, 50, (3, 11))
    want, got = _run(model, x, "reference"), _run(model, x, "cpu")
    assert set(got) == set(want) and len(got) > 3
    for k, v in want.items():
        scale = max(1.0, v.abs().max().item())
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5 * scale, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize(("methods", "fused"), [(None, True), ({"output_offset": {}}, False)],
                         ids=["plain", "output-term"])
def test_vim_directions_fused_unless_a_method_adds_an_output_term(methods, fused, monkeypatch) -> None:
    """The cpu backend's bidirectional calls run for Vim's two plain directions (once per layer each)."""
    monkeypatch.delenv("HYBRIDSEARCH_SCAN_BACKEND", raising=False)
    import importlib

    cpu = importlib.import_module("hybridsearch.kernels.selective_scan.cpu")
    dispatch = importlib.import_module("hybridsearch.kernels.selective_scan")
    calls = {"scan": 0, "conv": 0}

    def spy(key, real):
        def call(*a, **k):
            calls[key] += 1
            return real(*a, **k)
        return call

    monkeypatch.setattr(cpu, "selective_scan_bidirectional_cpu", spy("scan", cpu.selective_scan_bidirectional_cpu))
    monkeypatch.setattr(dispatch, "causal_conv1d_bidirectional_cpu",
                        spy("conv", dispatch.causal_conv1d_bidirectional_cpu))
    model = build(VIM)
    if methods:
        model = apply_peft(model, {"methods": methods})
    _run(model, torch.randn(2, 3, 16, 16), "cpu")
    assert calls == {"scan": VIM.depth if fused else 0, "conv": VIM.depth}  # the convs fuse whatever the terms
