"""Hybrids: every pair of registered methods composes on every model both apply to."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import KINDS, applicable, tiny_input, tiny_loss, tiny_model

from hybridsearch import apply_peft, count_parameters
from hybridsearch.peft import end_warmup

PAIRS = [(kind, a, b) for kind in KINDS for a, b in itertools.combinations(applicable(kind), 2)]


@pytest.fixture(scope="module")
def alone() -> dict[tuple[str, str], dict]:
    """Counts of each method applied alone (defaults), per model kind."""
    return {(kind, n): count_parameters(apply_peft(tiny_model(kind), {"methods": {n: {}}}))
            for kind in KINDS for n in applicable(kind)}


def _forward_backward(kind: str, model: torch.nn.Module) -> torch.Tensor:
    end_warmup(model)  # past sdt's warm-up, as in a run: its selection trains
    out = model.train()(tiny_input(kind))
    tiny_loss(kind, out).backward()
    return out


@pytest.mark.parametrize(("kind", "a", "b"), PAIRS, ids=[f"{k}-{a}+{b}" for k, a, b in PAIRS])
def test_pair_composes(kind, a, b, alone):
    model = apply_peft(tiny_model(kind), {"methods": {a: {}, b: {}}})
    counts = count_parameters(model)
    ca, cb = alone[kind, a], alone[kind, b]
    assert counts["by_method"] == {a: ca["by_method"][a], b: cb["by_method"][b]}
    assert counts["trainable"] > max(ca["trainable"], cb["trainable"])
    assert counts["trainable"] == ca["trainable"] + cb["trainable"] - counts["head"]

    out = _forward_backward(kind, model)
    assert torch.isfinite(out).all()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("kind", KINDS)
def test_every_method_at_once(kind, alone):
    names = applicable(kind)
    model = apply_peft(tiny_model(kind), {"methods": dict.fromkeys(names, {})})
    counts = count_parameters(model)
    assert counts["by_method"] == {n: alone[kind, n]["by_method"][n] for n in names}
    out = _forward_backward(kind, model)
    assert torch.isfinite(out).all()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_hybrid_is_applied_in_canonical_order():
    """The order of the config's keys does not matter: the same hybrid gives the same model."""
    forward = {"lora_X": {"rank": 2}, "affix": {"tokens": 2}, "tune_A": {}, "prompt": {"tokens": 2}}
    backward = dict(reversed(forward.items()))
    x = tiny_input("vim")
    outs = []
    for cfg in (forward, backward):
        model = apply_peft(tiny_model("vim"), {"methods": cfg}).eval()
        assert list(model.peft_config.to_dict()["methods"]) == ["lora_X", "prompt", "affix", "tune_A"]
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.1)
            outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
