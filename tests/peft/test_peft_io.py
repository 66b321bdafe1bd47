"""save_adapters / load_adapters round trips and merge_peft, over the whole method matrix (conftest.py)."""

from __future__ import annotations

import functools
import json
import re

import pytest
import torch
from conftest import LORA_FAMILY, PARTIAL, applicable, perturb_trainable, tiny_input, tiny_model
from safetensors.torch import load_file, save_file

from hybridsearch import PeftConfig, apply_peft, load_adapters, merge_peft, save_adapters
from hybridsearch.errors import CheckpointError, ConfigError
from hybridsearch.peft import ADAPTER_FILE, CONFIG_FILE, META_FILE, end_warmup


def _trained(kind: str, config: dict, seed: int = 0) -> torch.nn.Module:
    """A tiny model with ``config`` applied, past any warm-up (as after training), and every trainable tensor
    moved off its init, in eval mode."""
    model = apply_peft(tiny_model(kind, seed), config)
    end_warmup(model)
    perturb_trainable(model)
    return model.eval()


@functools.cache
def _base_keys(kind: str) -> tuple[str, ...]:
    return tuple(tiny_model(kind).state_dict())


def _trainable_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# -- save / load ------------------------------------------------------------------------------------------------
def test_save_load_round_trip(variant, tmp_path):
    model = _trained(variant.kind, variant.config)
    x = tiny_input(variant.kind)
    with torch.no_grad():
        want = model(x)
    save_adapters(model, tmp_path)

    tensors = load_file(str(tmp_path / ADAPTER_FILE))
    state = {n for n in tensors if tensors[n].dtype == torch.int64}  # a method's own state: sdt's selection
    assert set(tensors) - state == _trainable_names(model)  # only trainable tensors are written
    assert all(".peft.sdt." in n for n in state) and bool(state) == ("sdt" in variant.methods)
    assert PeftConfig.from_yaml(tmp_path / CONFIG_FILE) == model.peft_config
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["kind"] == model.kind and set(meta["counts"]["by_method"]) == set(variant.methods)

    fresh = tiny_model(variant.kind)  # same seed: same base weights, untouched adapters
    with torch.no_grad():
        plain = fresh.eval()(x)
    assert variant.inert or not torch.equal(plain, want)
    load_adapters(fresh, tmp_path)
    with torch.no_grad():
        got = fresh.eval()(x)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert fresh.peft_config == model.peft_config


def test_load_into_a_model_with_the_config_already_applied(tmp_path):
    config = {"methods": {"lora_X": {"rank": 3}, "tune_A": {"mode": "unfreeze"}, "prompt": {}}}
    model = _trained("vim", config)
    save_adapters(model, tmp_path)
    other = apply_peft(tiny_model("vim"), config)
    load_adapters(other, tmp_path)
    x = tiny_input("vim")
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(x), model(x), atol=0, rtol=0)


SHAPE_CASES = [  # (id, kind, saved config, model config, a key the error must name)
    ("lora-rank", "vim", {"lora_X": {"rank": 2}}, {"lora_X": {"rank": 3}},
     "layers.0.mixer.peft.lora_X.adapters.f.down.weight"),
    ("dora-rank", "lm", {"lora_dt": {"rank": 2, "dora": True}}, {"lora_dt": {"rank": 4, "dora": True}},
     "backbone.layers.1.mixer.peft.lora_dt.adapters.f.up.weight"),
    ("affix-tokens", "vim", {"affix": {"tokens": 2}}, {"affix": {"tokens": 3}}, "peft.affix.encoder.embedding.weight"),
    ("prompt-tokens", "vim", {"prompt": {"tokens": 2}}, {"prompt": {"tokens": 4}},
     "peft.prompt.encoder.embedding.weight"),
    ("scan-states", "lm", {"additional_scan": {"states": 2}}, {"additional_scan": {"states": 3}},
     "backbone.layers.0.mixer.peft.additional_scan.A_log.f"),
]


@pytest.mark.parametrize(("kind", "saved", "other", "key"), [c[1:] for c in SHAPE_CASES],
                         ids=[c[0] for c in SHAPE_CASES])
def test_load_with_other_shapes_names_the_keys(tmp_path, kind, saved, other, key):
    save_adapters(_trained(kind, {"methods": saved}), tmp_path)
    target = apply_peft(tiny_model(kind), {"methods": other})
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    with pytest.raises(CheckpointError, match=re.escape(key)) as err:
        load_adapters(target, tmp_path)
    assert "shape mismatches" in str(err.value)
    assert all(torch.equal(before[n], p) for n, p in target.named_parameters())  # nothing half-loaded


def test_load_reports_missing_and_unexpected_keys(tmp_path):
    save_adapters(_trained("vim", {"methods": {"lora_X": {"rank": 2}, "tune_A": {"mode": "unfreeze"}}}), tmp_path)
    more = apply_peft(tiny_model("vim"), {"methods": {"lora_X": {"rank": 2}, "tune_A": {"mode": "unfreeze"},
                                                      "tune_D": {}}})
    with pytest.raises(CheckpointError, match=re.escape("layers.0.mixer.peft.tune_D.delta_.f")):
        load_adapters(more, tmp_path)
    # an adapter file must never overwrite tensors that the target model keeps frozen
    fewer = apply_peft(tiny_model("vim"), {"methods": {"lora_X": {"rank": 2}}})
    a_log = fewer.layers[0].mixer.A_log.detach().clone()
    with pytest.raises(CheckpointError, match=r"unexpected \[.*layers\.0\.mixer\.A_log"):
        load_adapters(fewer, tmp_path)
    assert torch.equal(fewer.layers[0].mixer.A_log, a_log)


def test_load_broken_adapter_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_adapters(tiny_model("lm"), tmp_path / "nothing")
    save_adapters(_trained("lm", {"methods": {"lora_X": {"rank": 2}}}), tmp_path)
    data = (tmp_path / ADAPTER_FILE).read_bytes()
    (tmp_path / ADAPTER_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read adapters"):
        load_adapters(tiny_model("lm"), tmp_path)
    save_file({"nope": torch.zeros(1)}, str(tmp_path / ADAPTER_FILE))
    with pytest.raises(CheckpointError, match="nope"):
        load_adapters(tiny_model("lm"), tmp_path)


def test_save_without_peft_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="apply_peft"):
        save_adapters(tiny_model("vim"), tmp_path)


# -- merge ------------------------------------------------------------------------------------------------------
def _check_merge(kind: str, config: dict) -> None:
    model = _trained(kind, config)
    x = tiny_input(kind)
    with torch.no_grad():
        want = model(x)
    merged = merge_peft(model)
    with torch.no_grad():
        got = merged(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert tuple(merged.state_dict()) == _base_keys(kind)
    assert merged.peft_config is None
    assert all(p.requires_grad for p in merged.parameters())
    assert not any(len(h.peft) for h in [merged, *merged.mixers])
    apply_peft(merged, {"methods": {"lora_X": {"rank": 2}}})  # a merged model is a plain base again


def test_merge_equals_unmerged(mergeable_variant):
    _check_merge(mergeable_variant.kind, mergeable_variant.config)


def _all_mergeable(kind: str, dora: tuple[str, ...] = (), mode: str = "delta") -> dict:
    methods: dict = {n: {"rank": 3, "dora": n in dora} for n in LORA_FAMILY if n in applicable(kind)}
    methods |= {n: {"mode": mode} for n in PARTIAL if n in applicable(kind)}
    if kind == "vim":
        methods["lora_embed"] = {"rank": 2}
    return {"methods": methods}


MERGE_COMBOS = [
    ("vim-all", "vim", _all_mergeable("vim")),
    ("vim-all-unfreeze", "vim", _all_mergeable("vim", mode="unfreeze")),
    ("vim-all-dora", "vim", _all_mergeable("vim", dora=LORA_FAMILY)),
    ("vim-dora-overlap-in_proj", "vim", _all_mergeable("vim", dora=("lora_X", "lora_in_proj"))),
    ("vim-dora-overlap-x_proj", "vim", _all_mergeable("vim", dora=("lora_x_proj", "lora_B"))),
    ("lm-all", "lm", _all_mergeable("lm")),
    ("lm-all-dora", "lm", _all_mergeable("lm", dora=LORA_FAMILY)),
    ("lm-dora-Z-plain-in_proj", "lm", {"methods": {"lora_in_proj": {"rank": 2}, "lora_Z": {"rank": 2, "dora": True}}}),
    ("mamba2-all", "mamba2", _all_mergeable("mamba2")),
    ("mamba2-all-unfreeze", "mamba2", _all_mergeable("mamba2", mode="unfreeze")),
    ("mamba2-all-dora", "mamba2", _all_mergeable("mamba2", dora=LORA_FAMILY)),
    ("mamba2-in_proj-rows-and-sdt", "mamba2", {"methods": {"lora_B": {"rank": 2, "dora": True}, "lora_C": {"rank": 2},
                                                          "lora_x_proj": {"rank": 2}, "sdt": {"channel_freeze": 0.5}}}),
    ("lm-layer-subsets", "lm", {"methods": {"lora_X": {"rank": {"0": 2, "1": 4}}, "tune_D": {"layers": [1]},
                                            "lora_dt": {"layers": 0, "dora": True}}}),
]


@pytest.mark.parametrize(("kind", "config"), [c[1:] for c in MERGE_COMBOS], ids=[c[0] for c in MERGE_COMBOS])
def test_merge_combinations(kind, config):
    _check_merge(kind, config)


def test_strict_merge_refuses_unmergeable_and_non_strict_keeps_it(unmergeable_variant):
    v = unmergeable_variant
    (name, settings), = v.methods.items()
    config = {"methods": {name: settings, "lora_X": {"rank": 2}, "tune_D": {}}}
    model = _trained(v.kind, config)
    x = tiny_input(v.kind)
    with torch.no_grad():
        want = model(x)
    with pytest.raises(ConfigError, match=rf"cannot fold {re.escape(name)} into"):
        merge_peft(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, atol=0, rtol=0)  # untouched by the refused merge
    assert set(model.peft_config.methods) == {name, "lora_X", "tune_D"}

    merged = merge_peft(model, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), want, atol=1e-5, rtol=1e-5)
    assert set(merged.peft_config.methods) == {name}
    keys = [k for k in merged.state_dict() if "peft" in k.split(".")]
    assert keys and all(f"peft.{name}." in k for k in keys)
    assert set(merged.state_dict()) - set(keys) == set(_base_keys(v.kind))


def test_merge_without_peft_is_an_error():
    with pytest.raises(ConfigError, match="no PEFT"):
        merge_peft(tiny_model("lm"))
