"""Every registered PEFT method: exact parameter counts, zero-init identity, gradient flow and config errors.

The tiny-model matrix (``variant`` and friends) comes from conftest.py.
"""

from __future__ import annotations

import math
import re
import time

import pytest
import torch
from conftest import (
    KINDS,
    KNOWN_METHODS,
    VARIANTS,
    applicable,
    perturb_trainable,
    tiny_input,
    tiny_loss,
    tiny_model,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridsearch import METHODS, MODELS, PeftConfig, apply_peft, count_config, count_parameters
from hybridsearch.errors import ConfigError
from hybridsearch.peft import counting, end_warmup, parse_layers


# -- the matrix itself ------------------------------------------------------------------------------------------
def test_matrix_knows_every_method():
    """A newly registered method must be classified in conftest.py (zero-init? mergeable?) to be tested."""
    assert set(METHODS.names()) == KNOWN_METHODS


@pytest.mark.parametrize("kind", KINDS)
def test_matrix_covers_every_applicable_method(kind):
    covered = {name for v in VARIANTS[kind] for name in v.methods}
    assert covered == set(applicable(kind))
    assert len({v.id for v in VARIANTS[kind]}) == len(VARIANTS[kind])


# -- exact counts (reference §4 / §11) ----------------------------------------------------------------------------
# (case id, method, settings, Vim-S count from the reference's table)
PAPER_VIM_S = [
    ("LoRAp(X)-r64", "lora_X", {"rank": 64}, 1_769_472),
    ("Additional-scan-N6", "additional_scan", {"states": 6}, 663_552),
    ("Affix-dual3-noproj", "affix", {"tokens": 3, "placement": "dual_prefix", "projection": False}, 221_184),
    ("A-tuning", "tune_A", {}, 589_824),
    ("conv1d-tuning", "tune_conv1d", {}, 147_456),
    ("LoRA(in_proj)-r32", "lora_in_proj", {"rank": 32}, 1_474_560),
    ("LoRA(out_proj)-r96", "lora_out_proj", {"rank": 96}, 2_654_208),
    ("LoRA(x_proj)-r64", "lora_x_proj", {"rank": 64}, 2_531_328),
    ("LoRA(dt)-r64", "lora_dt", {"rank": 64}, 2_433_024),
    ("LoRAp(B)-r64", "lora_B", {"rank": 64}, 2_408_448),
    ("LoRAp(C)-r64", "lora_C", {"rank": 64}, 2_408_448),
    ("LoRAp(d)-r64", "lora_d", {"rank": 64}, 2_433_024),
    ("patch-embed-LoRA-r32", "lora_embed", {"rank": 32}, 36_864),
    ("prompt-8-noproj", "prompt", {"tokens": 8, "projection": False}, 3_072),
    ("prompt-8-proj", "prompt", {"tokens": 8, "projection": True}, 298_752),
    ("D-tuning", "tune_D", {}, 36_864),
    ("dt-bias-tuning", "tune_dt_bias", {}, 36_864),
    ("cls-token-tuning", "tune_cls_token", {}, 384),
    ("pos-embed-tuning", "tune_pos_embed", {}, 75_648),
    ("Affix-dual3-proj", "affix", {"tokens": 3, "placement": "dual_prefix", "projection": True}, 115_685_376),
]


def _group(cases) -> list[dict]:
    """Pack the cases into as few hybrids as possible (a method appears once per hybrid): one count each."""
    groups: list[dict] = []
    for _, method, cfg, _ in cases:
        for g in groups:
            if method not in g:
                g[method] = cfg
                break
        else:
            groups.append({method: cfg})
    return groups


@pytest.fixture(scope="module")
def vim_small_counts() -> list[dict]:
    return [count_config("vim-small", {"methods": g}) for g in _group(PAPER_VIM_S)]


@pytest.mark.parametrize(("method", "cfg", "expected"), [c[1:] for c in PAPER_VIM_S], ids=[c[0] for c in PAPER_VIM_S])
def test_vim_small_counts_match_the_paper(vim_small_counts, method, cfg, expected):
    matching = [c for g, c in zip(_group(PAPER_VIM_S), vim_small_counts) if g.get(method) == cfg]
    assert matching, "case not counted"
    assert matching[0]["by_method"][method] == expected


def test_count_totals_are_consistent(vim_small_counts):
    head = 1000 * 384 + 1000
    plain = count_config("vim-small", {})
    assert plain == {"base": plain["base"], "trainable": head, "head": head, "by_method": {}}
    for c in vim_small_counts:
        assert c["head"] == head
        assert c["trainable"] == sum(c["by_method"].values()) + head
        assert c["base"] == plain["base"]  # every case is a v2 delta / adapter: the base is untouched


def test_single_method_count_equals_its_share_of_a_hybrid():
    alone = count_config("vim-small", {"methods": {"lora_X": {"rank": 64}}})
    assert alone["by_method"] == {"lora_X": 1_769_472}
    assert alone["trainable"] == 1_769_472 + 385_000


def test_mamba_1p4b_lorap_x():
    c = count_config("mamba-1.4b", {"methods": {"lora_X": {"rank": 64}}})
    assert c["by_method"] == {"lora_X": 18_874_368}
    assert c["head"] == 0
    assert c["trainable"] == 18_874_368  # the LM's tied head stays frozen


def _arch(model_name: str) -> dict:
    spec = MODELS.get(model_name)
    c = spec.config
    D = c.d_model
    vim = spec.kind == "vim"
    return {
        "D": D, "E": c.expand * D, "N": c.d_state, "R": c.dt_rank or math.ceil(D / 16), "K": c.d_conv,
        "L": c.depth if vim else c.n_layer, "dirs": 2 if vim else 1, "vim": vim,
        "patches": c.num_patches if vim else 0, "P": c.patch_size if vim else 0,
        "vocab": 0 if vim else c.padded_vocab,
    }


def _expected(model_name: str, method: str, s: dict) -> int:
    """Independent closed forms from the reference (§3, §4): per layer, times depth, times scan directions."""
    a = _arch(model_name)
    D, E, N, R, K, L, dirs = a["D"], a["E"], a["N"], a["R"], a["K"], a["L"], a["dirs"]
    r = s.get("rank", 0)
    dora = s.get("dora", False)
    shared = {  # (in, out) of the adapter; one per layer (in_proj / out_proj are shared by both directions)
        "lora_in_proj": (D, 2 * E), "lora_X": (D, E), "lora_Z": (D, E), "lora_out_proj": (E, D),
        "parallel_adapter": (E, D),
    }
    per_dir = {"lora_x_proj": (E, R + 2 * N), "lora_d": (E, R), "lora_B": (E, N), "lora_C": (E, N),
               "lora_dt": (R, E)}
    if method in shared:
        i, o = shared[method]
        return L * (r * (i + o) + (i if dora else 0))
    if method in per_dir:
        i, o = per_dir[method]
        return L * dirs * (r * (i + o) + (i if dora else 0))
    if method == "lora_embed":
        return r * (3 * a["P"] ** 2 + D) if a["vim"] else r * (a["vocab"] + D)
    if method == "additional_scan":
        return L * dirs * 3 * E * s["states"]
    if method == "affix":
        per = 2 if "dual" in s["placement"] else 1
        dim = D if s["placement"].startswith("outer_") else 2 * E
        out = L * per * dim
        if not s.get("projection"):
            return s["tokens"] * out
        h = s.get("hidden") or dim
        return s["tokens"] * dim + dim * h + h + h * out + out
    if method == "prompt":
        n = s["tokens"]
        return n * D + (2 * (D * D + D) if s.get("projection") else 0)
    if method == "sdt":  # kept channels kc, kept states ks: kc ks A_log entries, N kc per B / C
        kc = max(1, E - round(s.get("channel_freeze", 0.99) * E))
        ks = max(1, N - round(s.get("state_freeze", 0.75) * N))
        targets = s.get("targets", ("A_log", "B", "C"))
        return L * dirs * (kc * ks * ("A_log" in targets) + N * kc * (("B" in targets) + ("C" in targets)))
    if method in ("state_offset", "init_state"):
        return L * dirs * E * N
    if method == "output_offset":
        return L * dirs * E
    unfreeze = s.get("mode") == "unfreeze"
    per_layer = {"tune_A": E * N, "tune_D": E, "tune_dt_bias": E, "tune_conv1d": E * K + (E if unfreeze else 0)}
    if method in per_layer:
        return L * dirs * per_layer[method]
    return {"tune_cls_token": D, "tune_pos_embed": (a["patches"] + 1) * D}[method]


_COMMON = {"parallel_adapter": {"rank": 7}, "lora_embed": {"rank": 5}, "lora_in_proj": {"rank": 3},
           "lora_X": {"rank": 9}, "lora_Z": {"rank": 4, "dora": True}, "lora_x_proj": {"rank": 6},
           "lora_d": {"rank": 2, "dora": True}, "lora_B": {"rank": 3}, "lora_C": {"rank": 5},
           "lora_dt": {"rank": 8, "dora": True}, "lora_out_proj": {"rank": 11},
           "prompt": {"tokens": 5, "placement": "prefix"}, "additional_scan": {"states": 4}, "tune_A": {},
           "tune_D": {}, "tune_conv1d": {"mode": "unfreeze"}, "tune_dt_bias": {}, "sdt": {},
           "state_offset": {}, "output_offset": {}, "init_state": {}}
_PROJECTED = {"lora_X": {"rank": 16, "dora": True}, "lora_out_proj": {"rank": 2, "dora": True},
              "prompt": {"tokens": 3, "placement": "prefix", "projection": True}, "tune_conv1d": {"mode": "delta"},
              "tune_A": {"mode": "unfreeze"}, "sdt": {"channel_freeze": 0.9, "state_freeze": 0.5, "targets": ["B"]}}
FORMULA_HYBRIDS = {  # (model, id) -> a hybrid of many methods; every by_method entry is checked against _expected
    ("vim-base", "plain"): _COMMON | {"affix": {"tokens": 3, "placement": "dual_centfix"}, "tune_cls_token": {},
                                     "tune_pos_embed": {"mode": "unfreeze"}},
    ("vim-base", "projected"): _PROJECTED | {"affix": {"tokens": 2, "placement": "outer_dual_prefix",
                                                       "projection": True}},
    ("mamba-130m", "plain"): _COMMON | {"affix": {"tokens": 2, "placement": "single_prefix"}},
    ("mamba-130m", "projected"): _PROJECTED | {"affix": {"tokens": 1, "placement": "single_infix", "projection": True,
                                                         "hidden": 32}},
}


@pytest.mark.parametrize(("model_name", "hybrid"), list(FORMULA_HYBRIDS), ids=[f"{m}-{h}" for m, h in FORMULA_HYBRIDS])
def test_counts_follow_the_formulas(model_name, hybrid):
    methods = FORMULA_HYBRIDS[model_name, hybrid]
    counts = count_config(model_name, {"methods": methods})
    assert counts["by_method"] == {m: _expected(model_name, m, s) for m, s in methods.items()}
    assert counts["trainable"] == sum(counts["by_method"].values()) + counts["head"]


@pytest.mark.parametrize("model_name", ["vim-base", "mamba-130m"])
def test_layer_subsets_and_rank_maps_scale_the_counts(model_name):
    a = _arch(model_name)
    methods = {
        "lora_X": {"rank": 4, "layers": "12-23"}, "lora_Z": {"rank": 4, "layers": [0, "3-5", 23]},
        "lora_in_proj": {"rank": {"0-11": 4, "12-23": 16}},
        "lora_dt": {"rank": {"0": 3, "5-6": 2}, "layers": "0-5"},  # layer 6 is outside ``layers``
        "tune_D": {"layers": 7}, "affix": {"tokens": 2, "placement": "single_prefix", "layers": "all"},
    }
    by = count_config(model_name, {"methods": methods})["by_method"]
    D, E, R, dirs = a["D"], a["E"], a["R"], a["dirs"]
    assert by == {
        "lora_X": 12 * 4 * (D + E), "lora_Z": 5 * 4 * (D + E), "lora_in_proj": (12 * 4 + 12 * 16) * (D + 2 * E),
        "lora_dt": (3 + 2) * dirs * (R + E), "tune_D": 1 * dirs * E, "affix": 2 * 24 * 2 * E,
    }


def test_counting_the_largest_model_allocates_nothing(monkeypatch):
    counted = []
    real = counting.count_parameters
    monkeypatch.setattr(counting, "count_parameters", lambda model: counted.append(model) or real(model))
    config = {"methods": {"lora_X": {"rank": 64}, "additional_scan": {}, "affix": {"projection": True},
                          "lora_embed": {}, "prompt": {"projection": True}, "lora_x_proj": {"dora": True}}}
    start = time.perf_counter()
    counts = count_config("mamba-2.8b", config)
    elapsed = time.perf_counter() - start
    assert counts["by_method"]["lora_X"] == 64 * 64 * (2560 + 5120)
    assert {p.device.type for p in counted[0].parameters()} == {"meta"}  # base and every adapter
    assert elapsed < 30, f"counting took {elapsed:.1f}s"


# -- zero-init identity and wiring ------------------------------------------------------------------------------
def test_zero_init_identity_and_wiring(variant):
    """Right after apply_peft the output is unchanged (zero-init methods, to 1e-6); changing the method's
    tensors then changes it (so the identity is not vacuous), except for inert placements."""
    model = tiny_model(variant.kind).eval()
    x = tiny_input(variant.kind)
    with torch.no_grad():
        base = model(x)
        apply_peft(model, variant.config)
        applied = model.eval()(x)
        if variant.zero_init:
            torch.testing.assert_close(applied, base, atol=1e-6, rtol=0)
        perturb_trainable(model, std=1.0, head=False)
        after = model(x)
    assert torch.isfinite(applied).all() and torch.isfinite(after).all()
    if variant.inert:  # suffix affix tokens: by design no scan reads them
        torch.testing.assert_close(applied, base, atol=1e-6, rtol=0)
        torch.testing.assert_close(after, applied, atol=0, rtol=0)
    else:  # the tiny SSM's contribution is small, but an unwired method would give bit-identical outputs
        assert (after - applied).abs().max() > 1e-6


def test_zero_init_matrix_is_not_empty():
    assert {n for v in VARIANTS["vim"] if v.zero_init for n in v.methods} >= {"lora_X", "tune_A", "additional_scan"}


# -- gradient flow and the trainable set ------------------------------------------------------------------------
def test_gradient_flow(variant):
    """One AdamW step (moving zero-initialised ``up`` weights), then every trainable tensor gets a non-zero
    gradient and no frozen tensor gets one. Also: exactly head + method tensors are trainable."""
    model = apply_peft(tiny_model(variant.kind), variant.config).train()
    counts = count_parameters(model)
    assert set(counts["by_method"]) == set(variant.methods)
    assert all(n > 0 for n in counts["by_method"].values())

    unfrozen = set(model._peft_unfrozen)
    modes = {s.get("mode", "delta") for m, s in variant.methods.items() if m.startswith("tune_")}
    assert bool(unfrozen) == ("unfreeze" in modes)
    for name, p in model.named_parameters():
        owned = "peft" in name.split(".") or name.startswith("head.") or id(p) in unfrozen
        assert p.requires_grad == owned, name

    x = tiny_input(variant.kind)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        out = model(x)
        tiny_loss(variant.kind, out).backward()
        if step == 0:
            opt.step()
            end_warmup(model)  # a run past its warm-up: sdt trains its selection from here on
    expected_shape = (2, 5) if variant.kind == "vim" else (2, 8, model.cfg.padded_vocab)
    assert out.shape == expected_shape
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"frozen {name} got a gradient"
            continue
        assert p.grad is not None, f"trainable {name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        if variant.inert and "peft" in name.split("."):
            assert p.grad.abs().sum() == 0, name
        else:
            assert p.grad.abs().sum() > 0, f"trainable {name} has an all-zero gradient"


def test_affix_and_prompt_keep_the_sequence_length():
    model = apply_peft(tiny_model("lm"), {"methods": {"prompt": {"tokens": 3}, "affix": {"tokens": 2}}})
    ids = tiny_input("lm")
    assert model(ids).shape == (2, 8, model.cfg.padded_vocab)
    assert model.forward_hidden(ids).shape == (2, 8, 16)


def test_lm_prompt_defaults_to_prefix():
    model = apply_peft(tiny_model("lm"), {"methods": {"prompt": {}}})
    assert model.peft["prompt"].placement == "prefix"
    vim = apply_peft(tiny_model("vim"), {"methods": {"prompt": {}}})
    assert vim.peft["prompt"].placement == "prefix_suffix"


# -- config validation ------------------------------------------------------------------------------------------
AFFIX_CHOICES = ["single_prefix", "dual_centfix_v2", "outer_dual_prefix"]
BAD_CONFIGS = [
    ("unknown-method", {"lora_Q": {}}, ["methods.lora_Q", "unknown method", "allowed:", "lora_X", "tune_A"]),
    ("unknown-field", {"lora_X": {"rnak": 4}}, ["methods.lora_X", "rnak", "allowed:", "rank", "scale"]),
    ("rank-0", {"lora_X": {"rank": 0}}, ["methods.lora_X.rank", "positive integer", "0"]),
    ("rank-negative", {"lora_X": {"rank": -1}}, ["methods.lora_X.rank", "-1"]),
    ("rank-float", {"lora_X": {"rank": 2.5}}, ["methods.lora_X.rank", "2.5"]),
    ("rank-bool", {"lora_X": {"rank": True}}, ["methods.lora_X.rank", "True"]),
    ("rank-string", {"lora_dt": {"rank": "8"}}, ["methods.lora_dt.rank"]),
    ("rank-map-value", {"lora_X": {"rank": {"0-3": 0}}}, ["methods.lora_X.rank['0-3']"]),
    ("rank-map-key", {"lora_X": {"rank": {"x": 4}}}, ["methods.lora_X.rank['x']"]),
    ("rank-map-empty", {"lora_X": {"rank": {}}}, ["methods.lora_X.rank"]),
    ("layers-min-gt-max", {"lora_X": {"layers": "5-2"}}, ["methods.lora_X.layers", "'5-2'", "min > max"]),
    ("layers-garbage", {"tune_A": {"layers": "a-b"}}, ["methods.tune_A.layers", "'a-b'"]),
    ("layers-bool", {"affix": {"layers": [True]}}, ["methods.affix.layers", "allowed:"]),
    ("layers-negative", {"tune_D": {"layers": -1}}, ["methods.tune_D.layers", "-1"]),
    ("layers-empty", {"tune_D": {"layers": []}}, ["methods.tune_D.layers"]),
    ("affix-placement", {"affix": {"placement": "middle"}}, ["methods.affix.placement", "'middle'", "allowed:",
                                                             *AFFIX_CHOICES]),
    ("prompt-placement", {"prompt": {"placement": "centfix"}}, ["methods.prompt.placement", "allowed:", "prefix",
                                                                "suffix", "infix", "prefix_suffix"]),
    ("scan-position", {"additional_scan": {"position": "middle"}}, ["methods.additional_scan.position",
                                                                    "prefix, suffix"]),
    ("scan-init", {"additional_scan": {"init": "zeros"}}, ["methods.additional_scan.init", "copy, s4d, constant"]),
    ("scan-states", {"additional_scan": {"states": 0}}, ["methods.additional_scan.states"]),
    ("scan-constant", {"additional_scan": {"init": "constant", "constant": -1.0}},
     ["methods.additional_scan.constant"]),
    ("partial-mode", {"tune_A": {"mode": "thaw"}}, ["methods.tune_A.mode", "delta, unfreeze"]),
    ("tokens-zero", {"prompt": {"tokens": 0}}, ["methods.prompt.tokens"]),
    ("projection-not-bool", {"affix": {"projection": "no"}}, ["methods.affix.projection", "True, False"]),
    ("dora-not-bool", {"lora_X": {"dora": "yes"}}, ["methods.lora_X.dora"]),
    ("scale-zero", {"lora_X": {"scale": 0}}, ["methods.lora_X.scale"]),
    ("dropout-one", {"lora_out_proj": {"dropout": 1.0}}, ["methods.lora_out_proj.dropout"]),
    ("lr-mult-negative", {"tune_D": {"lr_mult": -1}}, ["methods.tune_D.lr_mult"]),
    ("settings-not-mapping", {"lora_X": 4}, ["methods.lora_X", "mapping"]),
    ("sdt-channel-freeze-one", {"sdt": {"channel_freeze": 1.0}}, ["methods.sdt.channel_freeze", "[0, 1)"]),
    ("sdt-state-freeze-negative", {"sdt": {"state_freeze": -0.1}}, ["methods.sdt.state_freeze", "-0.1"]),
    ("sdt-freeze-string", {"sdt": {"state_freeze": "half"}}, ["methods.sdt.state_freeze"]),
    ("sdt-warmup-zero", {"sdt": {"warmup_steps": 0}}, ["methods.sdt.warmup_steps", "between 1 and"]),
    ("sdt-targets-unknown", {"sdt": {"targets": ["A_log", "D"]}}, ["methods.sdt.targets", "A_log, B, C", "'D'"]),
    ("sdt-targets-empty", {"sdt": {"targets": []}}, ["methods.sdt.targets", "non-empty"]),
    ("sdt-targets-twice", {"sdt": {"targets": ["B", "B"]}}, ["methods.sdt.targets", "distinct"]),
    ("sdt-targets-string", {"sdt": {"targets": "A_log"}}, ["methods.sdt.targets", "list"]),
    ("state-offset-unknown-field", {"state_offset": {"init": "random"}}, ["methods.state_offset", "init",
                                                                           "allowed:", "layers"]),
]


@pytest.mark.parametrize(("methods", "fragments"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_names_the_key(methods, fragments):
    with pytest.raises(ConfigError) as err:
        PeftConfig.from_dict({"methods": methods})
    for f in fragments:
        assert f in str(err.value)


def test_bad_top_level():
    with pytest.raises(ConfigError, match="allowed: methods"):
        PeftConfig.from_dict({"methods": {}, "method": {}})
    with pytest.raises(ConfigError, match="mapping"):
        PeftConfig.from_dict(["lora_X"])
    with pytest.raises(ConfigError, match="mapping"):
        PeftConfig.from_dict({"methods": ["lora_X"]})


BAD_APPLIES = [  # valid syntax, wrong for the model: detected by apply_peft
    ("layers-out-of-range", "vim", {"lora_X": {"layers": "0-5"}}, ["methods.lora_X.layers", "0-5", "outside",
                                                                    "0-1"]),
    ("layer-out-of-range", "lm", {"affix": {"layers": [7]}}, ["methods.affix.layers", "outside"]),
    ("scan-layers-out-of-range", "vim", {"additional_scan": {"layers": 2}}, ["methods.additional_scan.layers"]),
    ("rank-map-out-of-range", "vim", {"lora_dt": {"rank": {"3": 2}}}, ["methods.lora_dt.rank['3']"]),
    ("lm-dual-affix", "lm", {"affix": {"placement": "dual_prefix"}}, ["methods.affix.placement", "single_",
                                                                       "outer_single_prefix"]),
    ("lm-outer-dual-affix", "lm", {"affix": {"placement": "outer_dual_prefix"}}, ["methods.affix.placement"]),
    ("lm-prompt-suffix", "lm", {"prompt": {"placement": "suffix"}}, ["methods.prompt.placement", "'prefix'"]),
    ("lm-cls-token", "lm", {"tune_cls_token": {}}, ["methods.tune_cls_token", "vim"]),
    ("lm-pos-embed", "lm", {"tune_pos_embed": {"mode": "unfreeze"}}, ["methods.tune_pos_embed"]),
    ("prompt-layers", "vim", {"prompt": {"layers": "0-1"}}, ["methods.prompt.layers", "not per layer"]),
    ("embed-layers", "lm", {"lora_embed": {"layers": [0]}}, ["methods.lora_embed.layers"]),
    ("embed-rank-map", "vim", {"lora_embed": {"rank": {"0": 2}}}, ["methods.lora_embed.rank"]),
    ("embed-dora", "vim", {"lora_embed": {"dora": True}}, ["methods.lora_embed.dora"]),
    ("adapter-dora", "vim", {"parallel_adapter": {"dora": True}}, ["methods.parallel_adapter.dora"]),
]


@pytest.mark.parametrize(("kind", "methods", "fragments"), [c[1:] for c in BAD_APPLIES],
                         ids=[c[0] for c in BAD_APPLIES])
def test_bad_apply_names_the_key(kind, methods, fragments):
    config = PeftConfig.from_dict({"methods": methods})  # syntactically fine
    with pytest.raises(ConfigError) as err:
        apply_peft(tiny_model(kind), config)
    for f in fragments:
        assert f in str(err.value)


def test_apply_twice_is_refused():
    model = apply_peft(tiny_model("vim"), {"methods": {"lora_X": {}}})
    with pytest.raises(ConfigError, match="already"):
        apply_peft(model, {"methods": {"tune_D": {}}})


def test_from_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods:\n  lora_X: {rank: 4\n  tune_A: {}\n")
    with pytest.raises(ConfigError) as err:
        PeftConfig.from_yaml(bad)
    assert str(bad) in str(err.value) and "malformed YAML" in str(err.value) and "line" in str(err.value)

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("methods:\n  lora_X: {rank: 0}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{wrong}: methods.lora_X.rank")):
        PeftConfig.from_yaml(wrong)

    with pytest.raises(ConfigError, match="cannot read"):
        PeftConfig.from_yaml(tmp_path / "missing.yaml")

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert PeftConfig.from_yaml(empty) == PeftConfig()


def test_apply_peft_accepts_a_yaml_path(tmp_path):
    path = tmp_path / "peft.yaml"
    path.write_text("methods:\n  lora_X: {rank: 4, layers: '1'}\n  tune_D: {mode: unfreeze}\n")
    model = apply_peft(tiny_model("vim"), path)
    assert set(model.peft_config.methods) == {"lora_X", "tune_D"}
    assert "lora_X" not in model.layers[0].mixer.peft and "lora_X" in model.layers[1].mixer.peft


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(kind, tmp_path):
    for i, variant in enumerate(VARIANTS[kind]):
        cfg = PeftConfig.from_dict(variant.config)
        assert PeftConfig.from_dict(cfg.to_dict()) == cfg, variant.id
        path = tmp_path / f"peft{i}.yaml"
        text = cfg.to_yaml(path)
        assert path.read_text() == text
        assert PeftConfig.from_yaml(path) == cfg, variant.id


def test_round_trip_keeps_canonical_order():
    cfg = PeftConfig.from_dict({"methods": {"tune_A": {}, "affix": {}, "lora_X": {"rank": 4}}})
    assert list(cfg.to_dict()["methods"]) == ["lora_X", "affix", "tune_A"]


_layer_item = st.one_of(st.integers(0, 23), st.tuples(st.integers(0, 23), st.integers(0, 23)).map(
    lambda t: f"{min(t)}-{max(t)}"))


@settings(max_examples=40, deadline=None)
@given(layers=st.lists(_layer_item, min_size=1, max_size=4), ranks=st.lists(st.integers(1, 64), min_size=1,
                                                                            max_size=3))
def test_layers_and_rank_maps_round_trip(layers, ranks):
    rank = {f"{i}-{i}": r for i, r in enumerate(ranks)} if len(ranks) > 1 else ranks[0]
    cfg = PeftConfig.from_dict({"methods": {"lora_B": {"rank": rank, "layers": layers}}})
    assert PeftConfig.from_dict(cfg.to_dict()) == cfg
    chosen = parse_layers(layers, 24)
    expect = set()
    for item in layers:
        lo, hi = (item, item) if isinstance(item, int) else map(int, item.split("-"))
        expect.update(range(lo, hi + 1))
    assert chosen == sorted(expect)
    got = cfg.methods["lora_B"].layer_ranks(24, "methods.lora_B")
    if isinstance(rank, int):
        assert got == dict.fromkeys(chosen, rank)
    else:
        assert got == {i: r for i, r in enumerate(ranks) if i in chosen}
