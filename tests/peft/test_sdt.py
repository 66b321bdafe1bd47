"""Sparse dimension tuning: the warm-up inside a training run, the selection, exact counts before training, the
masked entries bit-identical to the base, save / load / merge of the selection."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb_trainable, tiny_input, tiny_loss, tiny_model

from hybridsearch import apply_peft, count_config, count_parameters, load_adapters, merge_peft, save_adapters
from hybridsearch.data.tokenizers import ByteTokenizer
from hybridsearch.errors import ConfigError
from hybridsearch.models import MambaConfig, build
from hybridsearch.peft import after_optimizer_step, end_warmup, in_warmup, param_groups
from hybridsearch.training.classifier import train_classifier
from hybridsearch.training.lm import LMRecipe, train_lm
from hybridsearch.training.recipe import Recipe

HALF = {"channel_freeze": 0.5, "state_freeze": 0.5}  # tiny models: 32 channels -> 16 kept, 4 states -> 2


def _modules(model: torch.nn.Module) -> list:
    return [m.peft["sdt"] for m in model.mixers if "sdt" in m.peft]


def _effective(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every direction's A_log and x_proj weight as the forward uses them (base + deltas)."""
    return {f"{i}.{d}.{t}": m.eff(t, d).detach().clone() for i, m in enumerate(model.mixers) for d in m.directions
            for t in ("A_log", "x_proj.weight")}


def _base(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{d}.{t}": m.param(t, d).detach().clone() for i, m in enumerate(model.mixers)
            for d in m.directions for t in ("A_log", "x_proj.weight")}


def _changed(model: torch.nn.Module) -> int:
    """How many entries of A_log and x_proj differ from the base in the forward."""
    base = _base(model)
    return sum(int((v != base[k]).sum()) for k, v in _effective(model).items())


def _images(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 5, (n,), generator=g)


def _recipe(epochs: int) -> Recipe:  # 48 images in batches of 16: 3 optimizer steps an epoch
    return Recipe(lr=1e-2, batch_size=16, epochs=epochs, warmup_epochs=0.0, schedule="constant", weight_decay=0.1)


# -- counts -----------------------------------------------------------------------------------------------------
def test_vim_small_count_is_known_from_the_ratios():
    # Vim-S: E 768, N 16, 24 layers, 2 directions; 768 - round(0.99 x 768) = 8 channels, 16 - 12 = 4 states
    assert count_config("vim-small", {"methods": {"sdt": {}}})["by_method"] == {"sdt": 48 * (8 * 4 + 2 * 16 * 8)}
    assert count_config("vim-small", {"methods": {"sdt": {"targets": ["A_log"]}}})["by_method"] == {"sdt": 48 * 32}


def test_at_least_one_channel_and_state_stay():
    model = apply_peft(tiny_model("vim"), {"methods": {"sdt": {"channel_freeze": 0.999, "state_freeze": 0.999}}})
    assert count_parameters(model)["by_method"]["sdt"] == 2 * 2 * (1 * 1 + 2 * 4 * 1)


def test_the_warm_up_delta_is_transient():
    model = apply_peft(tiny_model("lm"), {"methods": {"sdt": {}}})
    counts = count_parameters(model)
    warm = [n for n, p in model.named_parameters() if ".warm." in n]
    assert warm and all(p.requires_grad for n, p in model.named_parameters() if n in warm)  # it trains ...
    assert counts["trainable"] == counts["by_method"]["sdt"] == 2 * (1 * 4 + 2 * 16 * 1)  # ... but is no adapter
    assert {id(p) for g in param_groups(model, 1e-3, 0.0) for p in g["params"]} >= {
        id(p) for n, p in model.named_parameters() if n in warm}


# -- the warm-up and the selection --------------------------------------------------------------------------------
def test_warm_up_trains_the_full_a_log_delta_only():
    model = apply_peft(tiny_model("vim"), {"methods": {"sdt": HALF}})
    perturb_trainable(model, head=False)  # values are not read during the warm-up: moving them changes nothing
    x = tiny_input("vim")
    tiny_loss("vim", model(x)).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if ".sdt." in n}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".warm." in n)
    assert all(g is None for n, g in grads.items() if ".values." in n)
    assert in_warmup(model) == {"sdt": 10}


def test_selection_ranks_channels_then_states_by_the_warm_up_change():
    model = apply_peft(tiny_model("lm"), {"methods": {"sdt": {"channel_freeze": 0.9, "state_freeze": 0.75}}})
    sdt = _modules(model)[0]
    E, N = sdt.warm["f"].shape  # 32 channels, 16 states: 3 channels and 4 states stay
    change = torch.zeros(E, N)
    change[5, :4] = 3.0  # channel 5: the largest total change; its states 0-3
    change[20, [1, 7, 9, 15]] = -2.5  # channel 20: second (the sign does not matter)
    change[11, 2:] = 0.5  # channel 11: third (14 x 0.25 = 3.5 beats 2 x 1.0 = 2.0 of channel 30)
    change[30, [3, 4]] = 1.0
    with torch.no_grad():
        sdt.warm["f"].copy_(change)
    end_warmup(model)
    assert sdt.channels_f.tolist() == [5, 11, 20]
    assert sdt.states_f.tolist() == [[0, 1, 2, 3], [2, 3, 4, 5], [1, 7, 9, 15]]  # ties: the lowest indices
    kept = torch.stack([change[5, :4], change[11, 2:6], change[20, [1, 7, 9, 15]]])
    assert torch.equal(sdt.values["A_log_f"], kept)  # the kept entries continue from their warm-up change
    assert not sdt.warm["f"].requires_grad and not sdt.warm["f"].any()


@pytest.mark.parametrize("targets", [["A_log", "B", "C"], ["A_log"], ["B", "C"]])
def test_a_trial_s_warm_up_then_only_the_selection_differs_from_the_base(targets):
    """The classifier loop runs the warm-up (2 steps) inside the run; afterwards exactly the selected entries
    differ from the base (as many as count says, known before training), the rest bit-identical."""
    model = apply_peft(tiny_model("vim"), {"methods": {"sdt": {**HALF, "warmup_steps": 2, "targets": targets}}})
    expected = count_parameters(model)["by_method"]["sdt"]
    epochs = []
    train_classifier(model, _images(), _images(16, 1), _recipe(2), on_epoch=lambda e, a: epochs.append(e))
    assert epochs == [0, 1]  # the pruner sees every epoch, the warm-up's included
    assert in_warmup(model) == {} and all(m.selected and m.steps == 2 for m in _modules(model))
    if "A_log" not in targets:  # the warm-up's change of A_log was only the ranking signal
        assert all(torch.equal(m.eff("A_log", d), m.param("A_log", d)) for m in model.mixers for d in m.directions)
    assert _changed(model) == expected  # every selected entry moved, no other one did
    assert count_parameters(model)["by_method"]["sdt"] == expected


def test_a_run_shorter_than_the_warm_up_selects_at_its_last_step():
    model = apply_peft(tiny_model("vim"), {"methods": {"sdt": {**HALF, "warmup_steps": 50}}})
    train_classifier(model, _images(), None, _recipe(1))
    assert all(m.selected and m.steps == 3 for m in _modules(model))
    a_log = sum(v.numel() for m in _modules(model) for k, v in m.values.items() if k.startswith("A_log"))
    assert _changed(model) == a_log  # the A_log entries kept their warm-up change; B / C had no step left


def test_the_lm_loop_counts_optimizer_steps_not_micro_batches():
    tok = ByteTokenizer()
    torch.manual_seed(0)
    model = apply_peft(build(MambaConfig(d_model=16, n_layer=2, vocab_size=tok.VOCAB_SIZE, d_state=4)),
                       {"methods": {"sdt": {**HALF, "warmup_steps": 2}}})
    records = [{"instruction": f"is {w} hot?", "input": "", "output": "the correct answer is true",
                "answer": "true"} for w in ("fire", "tea", "sun", "ice", "snow", "lava", "rain", "sand")]
    recipe = LMRecipe(batch_size=4, micro_batch_size=2, warmup_steps=0, cutoff_len=128, schedule="constant",
                      epochs=2, lr=1e-2)
    steps = []
    for m in _modules(model):
        real = m.after_optimizer_step
        m.after_optimizer_step = lambda last, real=real, m=m: (steps.append((m.steps, last)), real(last))[1]
    train_lm(model, tok, records, recipe)
    assert steps[:4] == [(0, False), (0, False), (1, False), (1, False)]  # 2 layers, one call per step each
    assert len(steps) == 2 * 4 and steps[-1][1]  # 2 epochs of 2 steps; the last call says so
    assert all(m.selected for m in _modules(model))
    assert _changed(model) == count_parameters(model)["by_method"]["sdt"]


def test_after_the_selection_the_masked_entries_stay_frozen_despite_momentum():
    """Adam's warm-up momentum must not move masked entries: the forward reads the compact values only."""
    model = apply_peft(tiny_model("lm"), {"methods": {"sdt": {**HALF, "warmup_steps": 1}}})
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    x = tiny_input("lm")
    for _ in range(4):
        opt.zero_grad(set_to_none=True)
        tiny_loss("lm", model(x)).backward()
        opt.step()
        after_optimizer_step(model)
    assert _changed(model) == count_parameters(model)["by_method"]["sdt"]


# -- save / load / merge -------------------------------------------------------------------------------------------
def test_saving_during_the_warm_up_is_one_clear_error(tmp_path):
    model = apply_peft(tiny_model("vim"), {"methods": {"sdt": {"warmup_steps": 4}, "lora_X": {"rank": 2}}})
    after_optimizer_step(model)
    with pytest.raises(ConfigError, match=r"warm-up of sdt \(3 optimizer steps left\).*end_warmup"):
        save_adapters(model, tmp_path)
    assert not (tmp_path / "adapter_model.safetensors").exists()


def test_save_load_restores_the_selection(tmp_path):
    model = apply_peft(tiny_model("vim"), {"methods": {"sdt": {**HALF, "warmup_steps": 1}}})
    train_classifier(model, _images(), None, _recipe(1))
    save_adapters(model, tmp_path)
    x = tiny_input("vim")
    fresh = load_adapters(tiny_model("vim"), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x), atol=0, rtol=0)
    for a, b in zip(_modules(fresh), _modules(model)):
        assert a.selected and torch.equal(a.channels_b, b.channels_b) and torch.equal(a.states_f, b.states_f)
        assert not any(w.requires_grad for w in a.warm.values())
    assert count_parameters(fresh) == count_parameters(model)


@pytest.mark.parametrize("phase", ["warm-up", "selected"])
def test_merge_is_exact_and_touches_only_the_selection(phase):
    model = apply_peft(tiny_model("vim"), {"methods": {"sdt": HALF}})
    if phase == "selected":
        end_warmup(model)
    perturb_trainable(model)
    model.eval()
    eff, base = _effective(model), _base(model)
    x = tiny_input("vim")
    with torch.no_grad():
        want = model(x)
        merged = merge_peft(model)
        got = merged(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    moved = 0
    for k, v in _base(merged).items():
        outside = eff[k] == base[k]
        assert torch.equal(v[outside], base[k][outside]), k  # bit-identical where sdt has no delta
        assert torch.equal(v, eff[k]), k  # base + delta, added once: the same float sum as the forward's
        moved += int((~outside).sum())
    # 2 layers x 2 directions: the whole (32, 4) A_log delta, or 16 channels x 2 states + B and C (4 x 16 each)
    assert moved == 4 * (32 * 4 if phase == "warm-up" else 16 * 2 + 2 * 4 * 16)
