"""Optimizer groups: each method's lr / decay multipliers, and no weight decay on the tensors a method declares
pretrained-like (``no_decay``): Additional-scan's new ``A_log`` columns, DoRA magnitudes (the reference decays
neither)."""

from __future__ import annotations

import pytest
from conftest import tiny_model

from hybridsearch.peft import apply_peft
from hybridsearch.peft.apply import param_groups


@pytest.mark.parametrize("kind", ["vim", "lm"])
def test_no_decay_sets_of_methods_are_applied(kind):
    model = tiny_model(kind)
    apply_peft(model, {"methods": {"additional_scan": {"states": 2, "decay_mult": 2.0},
                                   "lora_X": {"rank": 2, "dora": True}}})
    groups = param_groups(model, lr=1e-3, weight_decay=0.1)
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or "peft" not in name.split("."):
            continue
        parts = name.split(".")
        method = parts[parts.index("peft") + 1]
        if "A_log" in parts or "magnitude" in parts:
            want = 0.0
        else:
            want = 0.1 * (2.0 if method == "additional_scan" else 1.0)
        assert decay[id(p)] == pytest.approx(want), name
        seen.add((method, "A_log" in parts or "magnitude" in parts))
    assert seen == {("additional_scan", True), ("additional_scan", False), ("lora_X", True), ("lora_X", False)}
