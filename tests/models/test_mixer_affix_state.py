"""Inner prefix affix tokens as an initial scan state (+ conv context) equal the explicit-token path exactly."""

from __future__ import annotations

import pytest
import torch

from hybridsearch import apply_peft
from hybridsearch.kernels import selective_scan
from hybridsearch.models import MambaConfig, VimConfig, build
from hybridsearch.models import mixer as mixer_mod

torch.set_num_threads(1)

CONFIGS = {
    "vim": VimConfig(d_model=16, depth=2, img_size=16, patch_size=4, d_state=4, num_classes=5, drop_path_rate=0.0),
    "lm": MambaConfig(d_model=16, n_layer=2, vocab_size=50),
}


def _run(model, x, as_state: bool, monkeypatch) -> dict[str, torch.Tensor]:
    calls = []

    def spy(*a, **k):
        calls.append(bool(k.get("return_last_state")))  # the prefix's own scan, for its last state
        return selective_scan(*a, **k)

    monkeypatch.setattr(mixer_mod, "selective_scan", spy)
    for m in model.mixers:
        m.affix_as_state = as_state
        m.scan_backend = "reference"
    model.zero_grad(set_to_none=True)
    out = model(x)
    w = torch.arange(out.numel(), dtype=torch.float32).view_as(out).cos()
    (out * w).sum().backward()
    assert any(calls) == as_state  # the state path really ran (and only when asked for)
    return {"out": out.detach(), **{n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}}


@pytest.mark.parametrize("extra", [(), ("additional_scan",), ("additional_scan", "init_state", "state_offset")],
                         ids=["affix", "affix+additional_scan", "affix+additional_scan+init_state+state_offset"])
@pytest.mark.parametrize(("kind", "placement", "tokens"), [
    ("vim", "single_prefix", 3), ("vim", "dual_prefix", 2), ("vim", "dual_prefix", 5), ("lm", "single_prefix", 1),
])
def test_prefix_affix_as_state_matches_tokens(kind: str, placement: str, tokens: int, extra: tuple[str, ...],
                                             monkeypatch) -> None:
    """Also with a trained initial state: the affix tokens are scanned from it, on either path."""
    torch.manual_seed(0)
    methods = {"affix": {"tokens": tokens, "placement": placement}, "lora_X": {"rank": 2}}
    methods |= {m: {"states": 3} if m == "additional_scan" else {} for m in extra}
    model = apply_peft(build(CONFIGS[kind]), {"methods": methods}).eval()
    with torch.no_grad():  # zero-initialised PEFT parts would hide gradient paths
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    x = torch.randn(3, 3, 16, 16) if kind == "vim" else torch.randint(0, 50, (3, 9))
    want, got = _run(model, x, False, monkeypatch), _run(model, x, True, monkeypatch)
    assert set(got) == set(want)
    assert any("affix" in k for k in got)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
