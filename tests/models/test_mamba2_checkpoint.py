"""Mamba-2 configs and what is built from them: every key of mamba_ssm's ``ssm_cfg {layer: Mamba2}`` and of
transformers' ``Mamba2Config`` honoured or refused in one line; the registered models' exact sizes (against
transformers' own model on the meta device and the real state-spaces config); the PEFT methods that do not apply to
Mamba-2 yet refused in one line; the language training path on a Mamba-2 checkpoint."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from hybridsearch import MODELS, create_model
from hybridsearch.cli import main
from hybridsearch.errors import CheckpointError, ConfigError
from hybridsearch.models import Mamba2Config, Mamba2LM, build, model_config
from hybridsearch.models.checkpoint import save_mamba
from hybridsearch.peft import apply_peft, count_config, count_parameters, load_adapters, save_adapters

TINY = Mamba2Config(d_model=16, n_layer=2, vocab_size=50, d_state=5, headdim=4, ngroups=2, chunk_size=6)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("m2")
    torch.manual_seed(0)
    model = build(TINY)
    return {fmt: save_mamba(model, root / fmt, fmt=fmt) for fmt in ("mamba_ssm", "hf")}


def edited(saved: dict[str, Path], tmp_path: Path, fmt: str, edit) -> Path:
    d = tmp_path / fmt
    shutil.copytree(saved[fmt], d)
    conf = json.loads((d / "config.json").read_text())
    edit(conf)
    (d / "config.json").write_text(json.dumps(conf))
    return d


def _ssm(**kw):
    return lambda c: c["ssm_cfg"].update(kw)


def _set(**kw):
    return lambda c: c.update(kw)


BAD = {  # (layout, edit, words of the one-line message)
    "headdim": ("mamba_ssm", _ssm(headdim=5), "ssm_cfg.headdim: 5 does not divide expand * d_model = 32"),
    "ngroups": ("mamba_ssm", _ssm(ngroups=3), "ssm_cfg.ngroups: 3 does not divide the 8 heads"),
    "d_ssm": ("mamba_ssm", _ssm(d_ssm=16), "ssm_cfg.d_ssm: 16 is not supported (a gated MLP beside the SSM)"),
    "dt_limit-order": ("mamba_ssm", _ssm(dt_limit=[0.5, 0.1]), "ssm_cfg.dt_limit: must be [low, high] with 0 <= low"),
    "dt_limit-word": ("mamba_ssm", _ssm(dt_limit=[0, "big"]), "ssm_cfg.dt_limit: must hold numbers, got 'big'"),
    "A_init_range": ("mamba_ssm", _ssm(A_init_range=[0, 16]), "ssm_cfg.A_init_range: must be [low, high] with 0 <"),
    "mamba1-key": ("mamba_ssm", _ssm(dt_rank=4), "ssm_cfg.dt_rank: unknown key; allowed: layer, d_state"),
    "rmsnorm-word": ("mamba_ssm", _ssm(rmsnorm="yes"), "ssm_cfg.rmsnorm: 'yes' is not supported; allowed: true, false"),
    "chunk": ("mamba_ssm", _ssm(chunk_size=0), "ssm_cfg.chunk_size: must be an integer between 1 and"),
    "mlp": ("mamba_ssm", _set(d_intermediate=64), "d_intermediate: 64 is not supported (an MLP after each mixer)"),
    "attention": ("mamba_ssm", _set(attn_layer_idx=[1]), "attn_layer_idx: [1] is not supported (attention layers)"),
    "layer-norm": ("mamba_ssm", _set(rms_norm=False), "rms_norm: False is not supported (LayerNorm)"),
    "mamba3": ("mamba_ssm", _ssm(layer="Mamba3"), "ssm_cfg.layer: 'Mamba3' is not supported; allowed: Mamba1, Mamba2"),
    "hf-num_heads": ("hf", _set(num_heads=4), "num_heads: 4 disagrees with expand * hidden_size / head_dim = 8"),
    "hf-n_groups": ("hf", _set(n_groups=3), "n_groups: 3 does not divide the 8 heads"),
    "hf-limit": ("hf", _set(time_step_limit=[0.0, {"__float__": "NaN"}]), "time_step_limit: must hold numbers"),
    "hf-rms_norm": ("hf", _set(rms_norm=False), "rms_norm: False is not supported"),
    "hf-act": ("hf", _set(hidden_act="gelu"), "hidden_act: 'gelu' is not supported; allowed: silu, swish"),
    "hf-residual": ("hf", _set(residual_in_fp32=False), "residual_in_fp32: False is not supported"),
    "hf-eps": ("hf", _set(layer_norm_epsilon=math.inf), "layer_norm_epsilon: must be a finite number > 0"),
    "hf-unknown": ("hf", _set(d_model=16), "d_model: unknown key; allowed: model_type"),
    "hf-falcon": ("hf", _set(model_type="falcon_mamba"), "model_type: 'falcon_mamba' is not supported; allowed: "
                                                         "mamba, mamba2"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_mamba2_configs_are_one_line(saved, tmp_path, capsys, case):
    fmt, edit, words = BAD[case]
    d = edited(saved, tmp_path, fmt, edit)
    with pytest.raises(CheckpointError) as e:
        create_model(d)
    msg = str(e.value)
    assert msg.startswith(str(d / "config.json")) and words in msg and "\n" not in msg, msg
    capsys.readouterr()
    assert main(["count", "--model", str(d)]) == 2  # count reads config.json only, and says the same
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err


@pytest.mark.parametrize(("fmt", "edit", "check"), [
    ("mamba_ssm", _ssm(dt_limit=[0.001, math.inf]), lambda c: c.dt_limit == (0.001, math.inf)),
    ("hf", _set(time_step_limit=[0.0, {"__float__": "Infinity"}]), lambda c: c.dt_limit == (0.0, math.inf)),
    ("hf", _set(norm_before_gate=True, time_step_rank=256, rms_norm=True),  # 4.4x keys transformers never reads
     lambda c: not c.norm_before_gate),
    ("hf", _set(tie_word_embeddings=True), lambda c: c.tie_embeddings),
    ("mamba_ssm", _ssm(conv_init=0.5, d_ssm=32, use_mem_eff_path=False), lambda c: c.d_inner == 32),
], ids=["ssm-limit-inf", "hf-limit-float-dict", "hf-legacy-keys", "hf-tied", "ssm-init-keys"])
def test_accepted_keys(saved, tmp_path, fmt, edit, check):
    assert check(model_config(edited(saved, tmp_path, fmt, edit)))


def test_an_untied_head_missing_from_the_weights_is_refused(tmp_path):
    model = build(Mamba2Config(**{**TINY.to_dict(), "tie_embeddings": False, "dt_limit": (0.0, math.inf)}))
    d = save_mamba(model, tmp_path / "hf", fmt="hf")
    from safetensors.torch import load_file, save_file

    sd = load_file(str(d / "model.safetensors"))
    del sd["lm_head.weight"]
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing keys: lm_head.weight"):
        create_model(d)


def test_a_bare_mamba2_state_dict_is_refused():
    with pytest.raises(CheckpointError, match="a Mamba-2 state dict does not say its n_groups"):
        create_model(build(TINY).state_dict())


# -- sizes ---------------------------------------------------------------------------------------------------------
STATE_SPACES_130M = {  # state-spaces/mamba2-130m's config.json
    "d_model": 768, "d_intermediate": 0, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {"layer": "Mamba2"},
    "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
    "pad_vocab_size_multiple": 16, "tie_embeddings": True,
}


def test_the_registered_sizes_are_transformers_own(capsys):
    transformers = pytest.importorskip("transformers")
    for name in [n for n in MODELS.names() if n.startswith("mamba2-")]:
        c = MODELS.get(name).config
        theirs = transformers.Mamba2Config(
            hidden_size=c.d_model, num_hidden_layers=c.n_layer, vocab_size=c.padded_vocab, num_heads=c.nheads,
            head_dim=c.headdim, state_size=c.d_state, n_groups=c.ngroups, tie_word_embeddings=True)
        with torch.device("meta"):
            want = sum(p.numel() for p in transformers.Mamba2ForCausalLM(theirs).parameters())
        assert count_parameters(create_model(name, device="meta"))["base"] == want, name
    capsys.readouterr()
    assert main(["count", "--model", "mamba2-130m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["base"] == 128_989_632


def test_the_state_spaces_config_is_the_registered_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(STATE_SPACES_130M))
    assert model_config(tmp_path) == MODELS.get("mamba2-130m").config
    assert count_config(str(tmp_path), {})["base"] == 128_989_632  # config.json only: there are no weights


# -- PEFT: what Mamba-2 has no part for ----------------------------------------------------------------------------
def test_a_method_without_its_part_is_refused_in_one_line_and_changes_nothing():
    """Every method applies to Mamba-2 (tests/peft) but LoRA(dt_proj): Mamba-2 makes dt in in_proj."""
    model = build(TINY)
    with pytest.raises(ConfigError) as e:
        apply_peft(model, {"methods": {"prompt": {}, "lora_dt": {}}})
    assert str(e.value).startswith("methods.lora_dt: this model's Mamba2 mixer has no dt_proj; allowed there: ")
    assert "lora_d," in str(e.value) and "lora_dt" not in str(e.value).split("allowed there: ")[1]
    assert all(p.requires_grad for p in model.parameters()) and getattr(model, "peft_config", None) is None
    with pytest.raises(ConfigError, match="methods.lora_dt: this model's Mamba2 mixer has no dt_proj"):
        count_config("mamba2-130m", {"methods": {"lora_dt": {}}})


def test_prompt_and_lora_embed_apply_train_and_reload(tmp_path):
    torch.manual_seed(0)
    model = build(TINY).eval()
    tokens = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        before = model(tokens)
    adapted = apply_peft(model, {"methods": {"lora_embed": {"rank": 2}}})
    with torch.no_grad():
        assert torch.equal(adapted(tokens), before)  # LoRA(embed) starts at zero
    model = apply_peft(build(TINY), {"methods": {"prompt": {"tokens": 3}, "lora_embed": {"rank": 2}}})
    out = model(tokens)
    assert out.shape == (2, 9, TINY.padded_vocab)
    out.sum().backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all(".peft." in f".{n}" for n in trained)
    counts = count_parameters(model)
    assert counts["by_method"]["lora_embed"] == 2 * (TINY.padded_vocab + TINY.d_model)
    with torch.no_grad():
        for p in model.peft.parameters():
            p.normal_()
        want = model(tokens)
    save_adapters(model, tmp_path / "ad")
    again = load_adapters(build(TINY), tmp_path / "ad")
    again.load_state_dict({k: v for k, v in model.state_dict().items() if ".peft." not in f".{k}"}, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(again(tokens), want)


def test_the_language_training_path_takes_a_mamba2_checkpoint(tmp_path, capsys):
    """``finetune`` (full fine-tuning, then LoRA(embed)) and ``evaluate`` on a byte-level Mamba-2 folder."""
    torch.manual_seed(0)
    base = save_mamba(build(Mamba2Config(d_model=16, n_layer=2, vocab_size=258, d_state=8, headdim=8, ngroups=1,
                                         chunk_size=16, pad_vocab_size_multiple=8)), tmp_path / "base")
    common = ["--model", str(base), "--tokenizer", "byte", "--limit-train", "4", "--max-steps", "1",
              "--recipe", '{"batch_size": 4, "micro_batch_size": 4}']
    assert main(["finetune", *common, "--out", str(tmp_path / "full")]) == 0
    full = create_model(tmp_path / "full")
    assert isinstance(full, Mamba2LM)
    assert main(["finetune", *common, "--peft", '{"methods": {"lora_embed": {"rank": 2}}}', "--out",
                 str(tmp_path / "lora")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(base), "--tokenizer", "byte", "--adapters", str(tmp_path / "lora"),
                 "--tasks", "boolq", "--limit", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"]["boolq"]["total"] == 2
