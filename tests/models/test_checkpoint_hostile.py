"""Hostile checkpoints: every key of a real ``config.json`` (mamba_ssm's, with its ``ssm_cfg``, and transformers'
``MambaConfig``) is honoured or refused with one line naming the file, the key and the allowed values; a Vim state
dict with odd tensor shapes, a folder with two disagreeing weight files and ``count`` on a folder never crash,
hang or load silently."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_input, tiny_model
from safetensors.torch import save_file

from hybridsearch import create_model
from hybridsearch.cli import main
from hybridsearch.errors import CheckpointError
from hybridsearch.models import MambaConfig, build, model_config
from hybridsearch.models import checkpoint as ckpt
from hybridsearch.models.checkpoint import read_state_dict, save_mamba, save_vim
from hybridsearch.peft import count_config, count_parameters

# what state-spaces/mamba-130m-hf's config.json holds besides the shapes: transformers' keys, the mamba_ssm keys it
# kept from the conversion, and runtime keys (the shapes come from the tiny model)
HF_REAL_EXTRA = {
    "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0, "fused_add_norm": True, "initializer_range": 0.1,
    "rescale_prenorm_residual": False, "rms_norm": True, "ssm_cfg": {}, "time_step_floor": 0.0001,
    "time_step_init_scheme": "random", "time_step_max": 0.1, "time_step_min": 0.001, "time_step_scale": 1.0,
    "torch_dtype": "float32", "transformers_version": "4.39.0.dev0", "use_cache": True, "pad_vocab_size_multiple": 8,
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    model = tiny_model("lm", seed=3)
    return {"mamba_ssm": save_mamba(model, root / "ssm"), "hf": save_mamba(model, root / "hf", fmt="hf")}


def edited(saved: dict[str, Path], tmp_path: Path, fmt: str, edit) -> Path:
    d = tmp_path / fmt
    shutil.copytree(saved[fmt], d)
    conf = json.loads((d / "config.json").read_text())
    conf = edit(conf) or conf
    (d / "config.json").write_text(json.dumps(conf))
    return d


def refused(directory: Path) -> str:
    with pytest.raises(CheckpointError) as e:
        create_model(directory)
    msg = str(e.value)
    assert msg.startswith(str(directory / "config.json")) and "\n" not in msg, msg
    return msg


def _ssm(**kw):
    return lambda c: c["ssm_cfg"].update(kw)


# (layout, edit, words of the message)
BAD_CONFIGS = {
    "d_model-string": ("mamba_ssm", lambda c: c.update(d_model="16"),
                       "d_model: must be an integer between 1 and 65,536, got '16'"),
    "d_model-negative": ("mamba_ssm", lambda c: c.update(d_model=-3), "d_model: must be an integer between 1 and"),
    "n_layer-huge": ("mamba_ssm", lambda c: c.update(n_layer=10**30),
                     "n_layer: must be an integer between 1 and 4,096"),
    "vocab-float": ("mamba_ssm", lambda c: c.update(vocab_size=100.5), "vocab_size: must be an integer"),
    "ssm_cfg-list": ("mamba_ssm", lambda c: c.update(ssm_cfg=[1, 2]), "ssm_cfg: must be a mapping, got list"),
    "mamba3": ("mamba_ssm", _ssm(layer="Mamba3"), "ssm_cfg.layer: 'Mamba3' is not supported; allowed: Mamba1, Mamba2"),
    # a Mamba-1 config relabelled never loads as Mamba-2: its shapes do not fit Mamba-2's defaults
    "mamba1-as-mamba2": ("mamba_ssm", _ssm(layer="Mamba2"),
                         "ssm_cfg.headdim: 64 does not divide expand * d_model = 32 (the heads' channels)"),
    "mamba2-key": ("mamba_ssm", _ssm(headdim=64), "ssm_cfg.headdim: unknown key"),
    "attention": ("mamba_ssm", lambda c: c.update(attn_layer_idx=[1], attn_cfg={"num_heads": 2}),
                  "attn_layer_idx: [1] is not supported (attention layers); allowed: []"),
    "mlp": ("mamba_ssm", lambda c: c.update(d_intermediate=64),
            "d_intermediate: 64 is not supported (an MLP after each mixer); allowed: 0"),
    "layer-norm": ("mamba_ssm", lambda c: c.update(rms_norm=False),
                   "rms_norm: False is not supported (LayerNorm); allowed: true"),
    "proj-bias": ("mamba_ssm", _ssm(bias=True),
                  "ssm_cfg.bias: True is not supported (biases on in_proj / out_proj); allowed: false"),
    "no-conv-bias": ("mamba_ssm", _ssm(conv_bias=False), "ssm_cfg.conv_bias: False is not supported"),
    "untied": ("mamba_ssm", lambda c: c.update(tie_embeddings=False),
               "tie_embeddings: False is not supported (an lm_head of its own); allowed: true"),
    "residual-not-fp32": ("mamba_ssm", lambda c: c.update(residual_in_fp32=False),
                          "residual_in_fp32: False is not supported"),
    "unknown-key": ("mamba_ssm", lambda c: c.update(norm_epsilon=1e-6), "norm_epsilon: unknown key; allowed: d_model"),
    "dt_min-nan": ("mamba_ssm", _ssm(dt_min=math.nan), "ssm_cfg.dt_min: must be a finite number > 0"),
    "dt_rank-word": ("mamba_ssm", _ssm(dt_rank="big"), "ssm_cfg.dt_rank: must be 'auto' or an integer"),
    "pad-zero": ("mamba_ssm", lambda c: c.update(pad_vocab_size_multiple=0), "pad_vocab_size_multiple: must be"),
    "hf-mamba1-as-mamba2": ("hf", lambda c: c.update(model_type="mamba2"),
                            "intermediate_size: unknown key; allowed: model_type, hidden_size"),
    "hf-falcon": ("hf", lambda c: c.update(model_type="falcon_mamba"),
                  "model_type: 'falcon_mamba' is not supported; allowed: mamba, mamba2"),
    "hf-use_bias": ("hf", lambda c: c.update(use_bias=True), "use_bias: True is not supported"),
    "hf-conv-bias": ("hf", lambda c: c.update(use_conv_bias=False), "use_conv_bias: False is not supported"),
    "hf-rank-word": ("hf", lambda c: c.update(time_step_rank="x"), "time_step_rank: must be 'auto' or an integer"),
    "hf-eps-nan": ("hf", lambda c: c.update(layer_norm_epsilon=math.nan),
                   "layer_norm_epsilon: must be a finite number > 0"),
    "hf-untied": ("hf", lambda c: c.update(tie_word_embeddings=False), "tie_word_embeddings: False is not supported"),
    "hf-gelu": ("hf", lambda c: c.update(hidden_act="gelu"), "hidden_act: 'gelu' is not supported; allowed: silu"),
    "hf-intermediate": ("hf", lambda c: c.update(intermediate_size=48),
                        "intermediate_size: 48 disagrees with expand * hidden_size = 32"),
    "hf-legacy-d_model": ("hf", lambda c: c.update(d_model=8), "d_model: 8 disagrees with hidden_size = 16"),
    "hf-quantized": ("hf", lambda c: c.update(quantization_config={"bits": 4}), "quantization_config: unknown key"),
    "not-an-object": ("mamba_ssm", lambda c: [1, 2], "must be a JSON object"),
    "neither-layout": ("mamba_ssm", lambda c: {"hidden": 3}, "neither a mamba_ssm config.json"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_values_are_refused(saved, tmp_path, case):
    fmt, edit, expected = BAD_CONFIGS[case]
    directory = edited(saved, tmp_path, fmt, edit)
    assert expected in refused(directory)
    with pytest.raises(CheckpointError, match="config.json"):
        model_config(directory)  # what `count` and the spaces read


@pytest.mark.parametrize(("text", "expected"), [
    ('{"d_model": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ('{"d_model": 1' + "0" * 5000 + "}", "an integer longer than 4,300 digits"),
    (b'\xff\xfe{"d_model": 16}', "not UTF-8 text"),
    ("{" + " " * 2_000_000 + "}", "larger than 1,048,576 bytes"),
], ids=["deep", "5000-digits", "binary", "huge"])
def test_unreadable_config_json_is_one_line(saved, tmp_path, capsys, text, expected):
    d = tmp_path / "ssm"
    shutil.copytree(saved["mamba_ssm"], d)
    (d / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    assert expected in refused(d)
    capsys.readouterr()
    assert main(["count", "--model", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err


def test_real_hf_config_keys_are_honoured(saved, tmp_path):
    """The real -hf config carries mamba_ssm's keys too (d_model, ssm_cfg, ...); its transformers keys decide:
    layer_norm_epsilon and time_step_rank are used, not dropped for the mamba_ssm reading."""
    model = build(MambaConfig(d_model=16, n_layer=2, vocab_size=100, dt_rank=3, eps=1e-6))
    d = save_mamba(model, tmp_path / "hf", fmt="hf")
    conf = json.loads((d / "config.json").read_text())
    conf.update(HF_REAL_EXTRA, d_model=16, n_layer=2, d_inner=32)
    (d / "config.json").write_text(json.dumps(conf))
    loaded = create_model(d)
    assert loaded.cfg.eps == 1e-6 and loaded.mixers[0].dt_rank == 3 and loaded.cfg.padded_vocab == 104
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(tiny_input("lm")), model.eval()(tiny_input("lm")), atol=0, rtol=0)


def test_mamba_ssm_dt_rank_and_runtime_keys_are_honoured(tmp_path):
    model = build(MambaConfig(d_model=16, n_layer=2, vocab_size=100, dt_rank=4))
    d = save_mamba(model, tmp_path / "ssm")
    conf = json.loads((d / "config.json").read_text())
    assert conf["ssm_cfg"]["dt_rank"] == 4  # the writer keeps a non-default dt_rank
    conf["ssm_cfg"].update(layer="Mamba1", dt_min=0.001, dt_max=0.1, dt_init="random", dt_scale=1.0,
                           dt_init_floor=1e-4, conv_bias=True, bias=False, use_fast_path=True)
    conf.update(d_intermediate=0, attn_layer_idx=[], attn_cfg={}, tie_embeddings=True, fused_add_norm=False,
                architectures=["MambaLMHeadModel"], torch_dtype="float32", transformers_version="4.40.0")
    (d / "config.json").write_text(json.dumps(conf))
    loaded = create_model(d)
    assert loaded.mixers[0].dt_rank == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(tiny_input("lm")), model.eval()(tiny_input("lm")), atol=0, rtol=0)


def test_bad_config_is_one_line_from_the_cli(saved, tmp_path, capsys):
    d = edited(saved, tmp_path, "mamba_ssm", _ssm(layer="Mamba3"))
    capsys.readouterr()
    assert main(["count", "--model", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"hybridsearch count: error: {d / 'config.json'}: ssm_cfg.layer: 'Mamba3' is not supported; "
                   "allowed: Mamba1, Mamba2 (Mamba3 and hybrids are other architectures)")


# -- two weight files ------------------------------------------------------------------------------------------------
def test_two_disagreeing_weight_files_are_refused(saved, tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(saved["hf"], d)
    torch.save(tiny_model("lm", seed=9).state_dict(), d / "pytorch_model.bin")  # another model's weights
    with pytest.raises(CheckpointError, match="model.safetensors and pytorch_model.bin disagree") as e:
        create_model(d)
    assert str(d) in str(e.value) and "keep one" in str(e.value)
    torch.save(tiny_model("lm", seed=3).state_dict(), d / "pytorch_model.bin")  # the same weights: fine
    create_model(d)


# -- count reads config.json only -------------------------------------------------------------------------------
def test_count_of_a_folder_reads_no_weights(saved, tmp_path, monkeypatch, capsys):
    d = tmp_path / "ssm"
    shutil.copytree(saved["mamba_ssm"], d)
    (d / "pytorch_model.bin").write_bytes(b"these bytes are never read")

    def no_weights(*a, **k):
        raise AssertionError("count read the weights")

    monkeypatch.setattr(ckpt, "read_state_dict", no_weights)
    monkeypatch.setattr(torch, "load", no_weights)
    want = count_parameters(tiny_model("lm"))["base"]
    assert count_config(str(d), {})["base"] == want
    assert main(["count", "--model", str(d), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["base"] == want
    assert all(p.is_meta for p in create_model(d, device="meta").parameters())


# -- Vim state dicts with odd shapes -----------------------------------------------------------------------------------
def _vim_file(tmp_path: Path, edit) -> Path:
    sd = read_state_dict(save_vim(tiny_model("vim"), tmp_path / "v.pth"))
    edit(sd)
    out = tmp_path / "odd.pth"
    torch.save({"model": sd}, out)
    return out


ODD_VIM = {
    "pos-1d": (lambda sd: sd.update(pos_embed=torch.zeros(5)),
               "pos_embed has shape (5,); expected (1, 1 + patches, d_model)"),
    "pos-scalar": (lambda sd: sd.update(pos_embed=torch.tensor(1.0)), "pos_embed has shape ()"),
    "pos-one-token": (lambda sd: sd.update(pos_embed=torch.zeros(1, 1, 16)),
                      "pos_embed holds 1 tokens; expected 1 + a square number of patches"),
    "pos-not-square": (lambda sd: sd.update(pos_embed=torch.zeros(1, 16, 16)), "pos_embed holds 16 tokens"),
    "patch-empty": (lambda sd: sd.update({"patch_embed.proj.weight": torch.zeros(0, 3, 4, 4)}),
                    "patch_embed.proj.weight has shape (0, 3, 4, 4)"),
    "patch-not-square": (lambda sd: sd.update({"patch_embed.proj.weight": torch.zeros(16, 3, 4, 2)}),
                         "patch_embed.proj.weight has shape (16, 3, 4, 2); expected square patches"),
    "A_log-odd": (lambda sd: sd.update({"layers.0.mixer.A_log": torch.zeros(3, 4)}),
                  "layers.0.mixer.A_log has shape (3, 4); expected (expand * d_model, d_state) with d_model 16"),
    "dt-1d": (lambda sd: sd.update({"layers.0.mixer.dt_proj.weight": torch.zeros(5)}),
              "layers.0.mixer.dt_proj.weight has shape (5,)"),
    "layer-gap": (lambda sd: sd.update({"layers.99999999999.mixer.D": torch.zeros(3)}),
                  "layers are numbered 0, 1, 99999999999; expected 0 to n - 1"),
    "layer-word": (lambda sd: sd.update({"layers.x.mixer.D": torch.zeros(3)}), "layers.x.mixer.D: layer 'x'"),
    "head-1d": (lambda sd: sd.update({"head.weight": torch.zeros(5)}), "head.weight has shape (5,)"),
    "no-pos": (lambda sd: sd.pop("pos_embed"), "not a Vim checkpoint (no pos_embed)"),
}


@pytest.mark.timeout(60)  # before the fix, "layer-gap" built a model of 10**11 layers
@pytest.mark.parametrize("case", list(ODD_VIM))
def test_odd_vim_shapes_are_refused(tmp_path, capsys, case):
    edit, expected = ODD_VIM[case]
    path = _vim_file(tmp_path, edit)
    for build_it in (lambda: create_model(path), lambda: model_config(path)):
        with pytest.raises(CheckpointError) as e:
            build_it()
        assert str(e.value).startswith(str(path)) and expected in str(e.value), str(e.value)
    capsys.readouterr()
    assert main(["count", "--model", str(path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize(("value", "expected"), [
    (math.nan, "holds NaN or infinite values"), (math.inf, "holds NaN or infinite values"),
    ("int", "layers.1.mixer.D: a int64 tensor; weights are floating point"),
])
def test_weights_must_be_finite_floats(tmp_path, value, expected):
    def edit(sd):
        if value == "int":
            sd["layers.1.mixer.D"] = sd["layers.1.mixer.D"].long()
        else:
            sd["layers.1.mixer.D"][3] = value

    path = _vim_file(tmp_path, edit)
    with pytest.raises(CheckpointError, match=expected) as e:
        create_model(path)
    assert str(e.value).startswith(str(path))
    lm = save_mamba(tiny_model("lm"), tmp_path / "lm")
    sd = torch.load(lm / "pytorch_model.bin", weights_only=True)
    sd["backbone.norm_f.weight"][0] = math.nan
    torch.save(sd, lm / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="backbone.norm_f.weight: holds NaN or infinite values"):
        create_model(lm)


def test_state_dict_keys_must_be_strings(tmp_path):
    path = tmp_path / "intkeys.pth"
    torch.save({"model": {1: torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not a state dict of tensors"):
        read_state_dict(path)


def test_vim_safetensors_shapes_are_read_without_the_weights(tmp_path, monkeypatch):
    model = tiny_model("vim")
    path = tmp_path / "v.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("weights read"))
    assert model_config(path).d_model == 16
    assert count_config(str(path), {})["base"] == count_parameters(model)["base"]
