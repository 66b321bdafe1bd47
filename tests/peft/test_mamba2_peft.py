"""PEFT on Mamba-2 (docs/methods.md, "Mamba-2"): where each method goes, exact counts, what is refused, the prefix
affix state, Additional-scan's own per-head A, SDT's heads and the state methods against their definitions.
The guarantees every method shares (identity, gradients, save / load, merge) run in the matrix (conftest.py,
kind ``mamba2``)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import MAMBA2_CONFIG, perturb_trainable, tiny_input, tiny_model

from hybridsearch import MODELS, apply_peft, count_config, count_parameters
from hybridsearch.cli import main
from hybridsearch.errors import ConfigError
from hybridsearch.kernels.ssd.naive import naive_ssd_scan
from hybridsearch.peft import end_warmup, merge_peft


# -- exact counts -------------------------------------------------------------------------------------------------
def _expected(c, method: str, s: dict) -> int:
    """Closed forms per layer times depth (one scan direction): in_proj rows are [z, x, B, C, dt]."""
    D, E, N, K, L, G = c.d_model, c.d_inner, c.d_state, c.d_conv, c.n_layer, c.ngroups
    H, P, GN = c.nheads, c.headdim, c.ngroups * c.d_state
    r, dora = s.get("rank", 0), s.get("dora", False)
    rows = {"lora_in_proj": 2 * E + 2 * GN + H, "lora_X": E, "lora_Z": E, "lora_B": GN, "lora_C": GN, "lora_d": H,
            "lora_x_proj": 2 * GN + H}
    if method in rows:
        return L * (r * (D + rows[method]) + (D if dora else 0))
    if method in ("lora_out_proj", "parallel_adapter"):
        return L * (r * (E + D) + (E if dora else 0))
    if method == "lora_embed":
        return r * (c.padded_vocab + D)
    if method == "prompt":
        return s["tokens"] * D
    if method == "affix":
        return s["tokens"] * L * (D if s["placement"].startswith("outer_") else 2 * E + 2 * GN + H)
    if method == "additional_scan":
        return L * (H + 2 * E * s["states"])
    if method == "sdt":
        kh = max(1, H - round(s["channel_freeze"] * H))
        ks = max(1, N - round(s["state_freeze"] * N))
        return L * (kh + 2 * G * ks * D)
    conv = E + 2 * GN
    per_layer = {"tune_A": H, "tune_D": H, "tune_dt_bias": H, "tune_norm": E,
                 "tune_conv1d": conv * K + (conv if s.get("mode") == "unfreeze" else 0),
                 "state_offset": H * P * N, "init_state": H * P * N, "output_offset": E}
    return L * per_layer[method]


HYBRIDS = {
    "loras": {"parallel_adapter": {"rank": 3}, "lora_embed": {"rank": 2}, "lora_in_proj": {"rank": 2},
              "lora_X": {"rank": 4, "dora": True}, "lora_Z": {"rank": 3}, "lora_x_proj": {"rank": 2},
              "lora_d": {"rank": 5, "dora": True}, "lora_B": {"rank": 2}, "lora_C": {"rank": 6},
              "lora_out_proj": {"rank": 7, "dora": True}},
    "the_rest": {"prompt": {"tokens": 3}, "affix": {"tokens": 2, "placement": "single_prefix"},
                 "additional_scan": {"states": 3}, "tune_A": {}, "tune_D": {"mode": "unfreeze"},
                 "tune_conv1d": {"mode": "unfreeze"}, "tune_dt_bias": {}, "tune_norm": {"mode": "unfreeze"},
                 "sdt": {"channel_freeze": 0.75, "state_freeze": 0.5}, "state_offset": {}, "output_offset": {},
                 "init_state": {}},
    "outer_affix": {"affix": {"tokens": 3, "placement": "outer_single_prefix"}, "tune_conv1d": {}},
}


@pytest.mark.parametrize("hybrid", list(HYBRIDS))
def test_counts_follow_the_formulas_on_mamba2_130m(hybrid):
    methods = HYBRIDS[hybrid]
    counts = count_config("mamba2-130m", {"methods": methods})
    c = MODELS.get("mamba2-130m").config
    assert counts["by_method"] == {m: _expected(c, m, s) for m, s in methods.items()}
    assert counts["trainable"] == sum(counts["by_method"].values()) and counts["head"] == 0


@pytest.mark.parametrize("hybrid", list(HYBRIDS))
def test_counts_equal_the_trainable_elements(hybrid):
    """On a built tiny Mamba-2 (2 groups): the count is the number of elements the optimizer moves."""
    model = apply_peft(tiny_model("mamba2"), {"methods": HYBRIDS[hybrid]})
    end_warmup(model)  # sdt's warm-up deltas are transient: not counted, frozen after it
    counts = count_parameters(model)
    assert counts["by_method"] == {m: _expected(MAMBA2_CONFIG, m, s) for m, s in HYBRIDS[hybrid].items()}
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_count_command_on_mamba2(tmp_path, capsys):
    peft = tmp_path / "peft.yaml"
    peft.write_text("methods:\n  lora_B: {rank: 8}\n  additional_scan: {states: 4}\n  tune_norm: {}\n")
    assert main(["count", "--model", "mamba2-370m", "--peft", str(peft), "--json"]) == 0
    by = json.loads(capsys.readouterr().out)["by_method"]
    c = MODELS.get("mamba2-370m").config
    assert by == {"lora_B": _expected(c, "lora_B", {"rank": 8}),
                  "additional_scan": _expected(c, "additional_scan", {"states": 4}),
                  "tune_norm": _expected(c, "tune_norm", {})}


# -- refusals -----------------------------------------------------------------------------------------------------
REFUSED = [
    ("mamba2", {"lora_dt": {}}, "methods.lora_dt: this model's Mamba2 mixer has no dt_proj; allowed there: "),
    ("lm", {"tune_norm": {}}, "methods.tune_norm: this model's Mamba1 mixer has no norm; allowed there: "),
    ("vim", {"tune_norm": {}, "lora_X": {}}, "methods.tune_norm: this model's Mamba1 mixer has no norm"),
    ("mamba2", {"additional_scan": {"init": "s4d"}}, "methods.additional_scan.init: 's4d'"),
    ("mamba2", {"additional_scan": {"position": "suffix"}}, "methods.additional_scan.position:"),
]


@pytest.mark.parametrize(("kind", "methods", "message"), REFUSED, ids=[f"{k}-{next(iter(m))}" for k, m, _ in REFUSED])
def test_refused_in_one_line(kind, methods, message):
    model = tiny_model(kind)
    with pytest.raises(ConfigError) as err:
        apply_peft(model, {"methods": methods})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    if "allowed there" in message:  # a missing part is refused before anything changes
        assert "lora_X" in str(err.value) and all(p.requires_grad for p in model.parameters())
        assert getattr(model, "peft_config", None) is None


# -- where each LoRA goes ------------------------------------------------------------------------------------------
E, GN, H = MAMBA2_CONFIG.d_inner, MAMBA2_CONFIG.ngroups * MAMBA2_CONFIG.d_state, MAMBA2_CONFIG.nheads
ROWS = {"lora_Z": (0, E), "lora_X": (E, 2 * E), "lora_B": (2 * E, 2 * E + GN), "lora_C": (2 * E + GN, 2 * E + 2 * GN),
        "lora_d": (2 * E + 2 * GN, 2 * E + 2 * GN + H), "lora_x_proj": (2 * E, 2 * E + 2 * GN + H),
        "lora_in_proj": (0, 2 * E + 2 * GN + H)}


@pytest.mark.parametrize("method", list(ROWS))
def test_each_lora_changes_its_rows_of_in_proj(method):
    """Merged, a LoRA changes exactly its rows of in_proj (Mamba-2's [z, x, B, C, dt]) and the logits stay."""
    model = apply_peft(tiny_model("mamba2"), {"methods": {method: {"rank": 2}}})
    perturb_trainable(model)
    x = tiny_input("mamba2")
    with torch.no_grad():
        want = model.eval()(x)
    merged = merge_peft(model)
    changed = [(merged.mixers[i].in_proj.weight - tiny_model("mamba2").mixers[i].in_proj.weight).abs().sum(1) > 0
               for i in range(2)]
    lo, hi = ROWS[method]
    for rows in changed:
        assert rows.nonzero().squeeze(1).tolist() == list(range(lo, hi))
    with torch.no_grad():
        torch.testing.assert_close(merged(x), want, atol=1e-5, rtol=1e-5)


# -- the scans against their definitions ----------------------------------------------------------------------------
def _inputs(mixer: torch.nn.Module, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 9, mixer.conv_dim, generator=g), torch.randn(2, 9, mixer.nheads, generator=g)


def _adapted_mixer(methods: dict) -> torch.nn.Module:
    model = apply_peft(tiny_model("mamba2"), {"methods": methods})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    mixer = model.mixers[1]
    mixer.scan_backend = "reference"
    return mixer


def test_state_methods_and_additional_scan_match_the_definition():
    """y_t = C_t . (h_t + h') + D x_t + y' with h_0 the trained initial state (state_offset, output_offset,
    init_state: h', h_0 (H, P, N), y' (E,)), plus Additional-scan's own SSD scan of x with its per-head A and its
    B', C' from the conv output, from zero and without D: a float64 loop (naive_ssd_scan) per term."""
    mixer = _adapted_mixer({"state_offset": {}, "output_offset": {}, "init_state": {},
                            "additional_scan": {"states": 2}})
    xBC, dt = _inputs(mixer)
    c, peft = MAMBA2_CONFIG, mixer.peft
    with torch.no_grad():
        got = mixer._ssm(xBC, dt, None)
        u = mixer._conv(xBC).double()
        x, B, C = u.split([E, GN, GN], dim=-1)
        x = x.unflatten(-1, (H, c.headdim))
        B, C = B.unflatten(-1, (c.ngroups, c.d_state)), C.unflatten(-1, (c.ngroups, c.d_state))
        common = {"dt_bias": mixer.dt_bias.double()}
        A = -torch.exp(mixer.A_log.double())
        h0 = peft["init_state"].h0["f"].double()[None].expand(2, -1, -1, -1)
        want = naive_ssd_scan(x, dt.double(), A, B, C, mixer.D.double(), initial_state=h0, **common).flatten(2)
        Ch = C.repeat_interleave(H // c.ngroups, dim=2)
        want = want + torch.einsum("blhn,hpn->blhp", Ch, peft["state_offset"].h["f"].double()).flatten(2)
        want = want + peft["output_offset"].y["f"].double()
        scan = peft["additional_scan"]
        Bx, Cx = F.linear(u[..., :E], scan.x_proj.weight.double()).split(2, dim=-1)
        want = want + naive_ssd_scan(x, dt.double(), -torch.exp(scan.A_log.double()), Bx[:, :, None], Cx[:, :, None],
                                     **common).flatten(2)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_each_state_method_and_the_extra_scan_change_the_output():
    """Not vacuous: each of them alone moves the scan's output."""
    for name in ("state_offset", "output_offset", "init_state", "additional_scan"):
        mixer = _adapted_mixer({name: {}})
        xBC, dt = _inputs(mixer)
        with torch.no_grad():
            got = mixer._ssm(xBC, dt, None)
            del mixer.peft[name]
            assert (got - mixer._ssm(xBC, dt, None)).abs().max() > 1e-3, name


@pytest.mark.parametrize("with_state", [False, True], ids=["alone", "with-init_state-and-additional_scan"])
def test_prefix_affix_as_a_state_equals_the_tokens_in_the_sequence(with_state):
    """Prefix affix tokens enter as an initial state + conv context (batch 1, once); the same tokens put in the
    sequence give the same outputs."""
    extra = {"init_state": {}, "additional_scan": {"states": 2}} if with_state else {}
    model = apply_peft(tiny_model("mamba2"), {"methods": {"affix": {"tokens": 5, "placement": "single_prefix"},
                                                          **extra}})
    perturb_trainable(model, std=0.3)
    x = tiny_input("mamba2")
    with torch.no_grad():
        as_state = model.eval()(x)
        for m in model.mixers:
            m.affix_as_state = False
        as_tokens = model(x)
        del model.peft["affix"]
        without = model(x)
    torch.testing.assert_close(as_state, as_tokens, atol=1e-5, rtol=1e-5)
    assert (as_state - without).abs().max() > 1e-3


# -- SDT's heads ------------------------------------------------------------------------------------------------------
def test_sdt_keeps_the_heads_and_states_that_moved_most():
    model = apply_peft(tiny_model("mamba2"), {"methods": {"sdt": {"channel_freeze": 0.75, "state_freeze": 0.5}}})
    sdt = model.mixers[0].peft["sdt"]
    N = MAMBA2_CONFIG.d_state
    with torch.no_grad():
        sdt.warm["A_log"].copy_(torch.tensor([0.1, 0.0, 2.0, 0.0, 0.0, -3.0, 0.2, 0.0]))
        score = torch.zeros(2 * N, sdt.warm["B"].shape[1])
        score[[1, 4, 6, 7, N + 0, N + 2, N + 3, N + 5], 0] = 1.0  # group 0: states 1 4 6 7; group 1: 0 2 3 5
        sdt.warm["B"].copy_(score)
    end_warmup(model)
    assert sdt.heads_f.tolist() == [2, 5] and sdt.states_f.tolist() == [[1, 4, 6, 7], [0, 2, 3, 5]]
    assert sdt.values["A_log_f"].tolist() == [2.0, -3.0]  # the kept heads continue from their warm-up change
    perturb_trainable(model)
    mixer = model.mixers[0]
    delta_A, delta_in = sdt.delta("A_log", mixer.A_log), sdt.delta("in_proj.weight", mixer.in_proj.weight)
    assert (delta_A != 0).nonzero().squeeze(1).tolist() == [2, 5]
    rows = (delta_in.abs().sum(1) != 0).nonzero().squeeze(1).tolist()
    B0, C0 = 2 * E, 2 * E + GN
    assert rows == [B0 + s for s in (1, 4, 6, 7, N, N + 2, N + 3, N + 5)] + [C0 + s for s in (1, 4, 6, 7, N, N + 2,
                                                                                            N + 3, N + 5)]
