"""The Hugging Face PEFT export, read back by the real libraries: ``peft.AutoPeftModelForCausalLM`` on transformers'
``MambaForCausalLM`` and ``peft.PeftModel`` on our Vim reproduce the logits of our adapted model for every hybrid
of the LoRA family (out_proj, dt_proj, DoRA and partial tuning merged into the base written beside the adapter);
what neither PEFT nor a merge can carry is listed as left out. No mock of peft or transformers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import perturb_trainable, tiny_input, tiny_model

from hybridsearch import create_model
from hybridsearch.cli import main
from hybridsearch.deploy import apply_adapters, export_hf_peft
from hybridsearch.models.checkpoint import save_mamba
from hybridsearch.peft import apply_peft, end_warmup, save_adapters

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft x transformers
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
TOLERANCE = 1e-4  # relative: max |ours - theirs| / max |ours|

# hybrids of the LoRA family; each one's PEFT folder must reproduce our logits
LM_HYBRIDS = {
    "every-lora": {
        "lora_in_proj": {"rank": 2, "scale": 0.5}, "lora_X": {"rank": {"0": 2, "1": 3}, "scale": 0.25},
        "lora_Z": {"rank": 2, "layers": [1]}, "lora_x_proj": {"rank": 2, "scale": 2.0}, "lora_d": {"rank": 1},
        "lora_B": {"rank": 2}, "lora_C": {"rank": 2, "scale": 0.5}, "lora_dt": {"rank": 2, "scale": 1.0},
        "lora_out_proj": {"rank": 3, "scale": 0.5}, "lora_embed": {"rank": 2, "scale": 0.5},
    },
    "dora-and-partial": {
        "lora_X": {"rank": 2, "dora": True}, "lora_Z": {"rank": 2}, "lora_x_proj": {"rank": 2},
        "lora_dt": {"rank": 2, "dora": True},
        "tune_A": {}, "tune_D": {}, "tune_conv1d": {"mode": "unfreeze"}, "tune_dt_bias": {},
    },
    "nothing-peft-applies": {"lora_out_proj": {"rank": 2}, "lora_dt": {"rank": 2}},
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers.utils.logging.set_verbosity_error()


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max())


def _hf_base(directory: Path) -> Path:
    """A base checkpoint written by transformers itself, with non-default settings."""
    torch.manual_seed(0)
    config = transformers.MambaConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, state_size=8,
                                      conv_kernel=3, time_step_rank=3, layer_norm_epsilon=1e-6)
    transformers.MambaForCausalLM(config).save_pretrained(directory)
    return directory


def _adapted(base: Path, methods: dict, out: Path) -> tuple[torch.nn.Module, Path]:
    model = create_model(base)
    apply_peft(model, {"methods": methods})
    perturb_trainable(model, std=0.3)  # far from the zero init, so that every method shows in the logits
    return model, save_adapters(model, out)


def _peft_lm(directory: Path, monkeypatch) -> torch.nn.Module:
    monkeypatch.chdir("/")  # base_model_name_or_path must resolve from anywhere
    return peft.AutoPeftModelForCausalLM.from_pretrained(str(directory)).eval()


def _peft_lm_logits(directory: Path, x: torch.Tensor, monkeypatch) -> torch.Tensor:
    with torch.no_grad():
        return _peft_lm(directory, monkeypatch)(input_ids=x).logits


@pytest.mark.parametrize("hybrid", list(LM_HYBRIDS))
def test_lm_export_loads_in_peft_and_reproduces_our_logits(tmp_path, monkeypatch, hybrid):
    base = _hf_base(tmp_path / "base")
    model, _ = _adapted(base, LM_HYBRIDS[hybrid], tmp_path / "ad")
    x = tiny_input("lm")
    with torch.no_grad():
        want = model.eval()(x)[..., :100]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = export_hf_peft(model, tmp_path / "hf")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched

    config = json.loads((tmp_path / "hf" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["peft_type"] == "LORA"
    assert config["base_model_name_or_path"] == str((tmp_path / "hf" / "base").resolve()) == info["base"]
    assert not any(t.endswith(("out_proj", "dt_proj", "conv1d")) for t in config["target_modules"])
    assert info["left_out"] == {} and set(info["adapter"]) | set(info["merged"]) == set(LM_HYBRIDS[hybrid])
    peft_model = _peft_lm(tmp_path / "hf", monkeypatch)
    with torch.no_grad():
        got = peft_model(input_ids=x).logits
        with peft_model.disable_adapter():  # the adapter does work: without it the logits are far off
            alone = peft_model(input_ids=x).logits
    print(f"{hybrid}: relative error {_rel(got, want):.1e}; without the adapter {_rel(alone, want):.1e}")
    assert _rel(got, want) <= TOLERANCE
    assert (_rel(alone, want) > 100 * max(_rel(got, want), 1e-7)) == bool(info["adapter"])


def test_lm_routing_is_reported(tmp_path):
    base = _hf_base(tmp_path / "base")
    model, _ = _adapted(base, LM_HYBRIDS["every-lora"], tmp_path / "ad")
    info = export_hf_peft(model, tmp_path / "hf")
    assert info["adapter"] == ["lora_B", "lora_C", "lora_X", "lora_Z", "lora_d", "lora_embed", "lora_in_proj",
                               "lora_x_proj"]
    assert set(info["merged"]) == {"lora_dt", "lora_out_proj"}
    assert "refuses LoRA on out_proj" in info["merged"]["lora_out_proj"]
    assert "reads dt_proj.weight directly" in info["merged"]["lora_dt"]
    config = info["config"]
    assert config["rank_pattern"]["backbone.layers.1.mixer.in_proj"] == 2 + 3 + 2  # in_proj, X, Z stacked
    assert config["rank_pattern"]["backbone.layers.0.mixer.in_proj"] == 2 + 2
    assert config["rank_pattern"]["backbone.embeddings"] == 2
    readme = (tmp_path / "hf" / "README.md").read_text()
    assert "AutoPeftModelForCausalLM" in readme and "`lora_out_proj`: PEFT refuses" in readme


def test_lm_nothing_in_the_adapter_is_a_zero_placeholder(tmp_path):
    model, _ = _adapted(_hf_base(tmp_path / "base"), LM_HYBRIDS["nothing-peft-applies"], tmp_path / "ad")
    info = export_hf_peft(model, tmp_path / "hf")
    assert info["adapter"] == [] and info["config"]["target_modules"] == ["backbone.layers.0.mixer.in_proj"]
    assert "a zero rank-1 LoRA stands in" in (tmp_path / "hf" / "README.md").read_text()


@pytest.mark.parametrize("fmt", ["mamba_ssm", "hf"])
def test_apply_cli_writes_a_folder_peft_loads(tmp_path, monkeypatch, capsys, fmt):
    """From either base layout, `apply --hf-peft` writes the transformers base beside the adapter."""
    base = save_mamba(create_model(_hf_base(tmp_path / "t")), tmp_path / "base", fmt)
    methods = {"lora_X": {"rank": 2}, "lora_out_proj": {"rank": 2}, "lora_dt": {"rank": 2},
               "lora_embed": {"rank": 2, "scale": 0.5}, "additional_scan": {"states": 2}}
    _, ad = _adapted(base, methods, tmp_path / "ad")
    capsys.readouterr()
    assert main(["apply", "--base", str(base), "--adapters", str(ad), "--hf-peft", str(tmp_path / "hf"),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["hf_peft"]
    assert summary["adapter"] == ["lora_X", "lora_embed"]
    assert set(summary["merged"]) == {"lora_dt", "lora_out_proj"}
    assert list(summary["left_out"]) == ["additional_scan"] and "architecture" in summary["left_out"]["additional_scan"]
    assert (tmp_path / "hf" / "base" / "model.safetensors").is_file()

    # left out means not reproduced: PEFT gives our model without Additional-scan, exactly
    ours = apply_adapters(base, ad)
    without = copy.deepcopy(ours)
    for mixer in without.mixers:
        del mixer.peft["additional_scan"]
    x = tiny_input("lm")
    with torch.no_grad():
        want, full = without(x)[..., :100], ours(x)[..., :100]
    got = _peft_lm_logits(tmp_path / "hf", x, monkeypatch)
    assert _rel(got, want) <= TOLERANCE < _rel(got, full)

    assert main(["apply", "--base", str(base), "--adapters", str(ad), "--hf-peft", str(tmp_path / "hf2")]) == 0
    out = capsys.readouterr().out
    assert "Hugging Face PEFT LoRA on" in out and "lora_X, lora_embed" in out
    assert "merged into" in out and "lora_dt, lora_out_proj" in out and "left out" in out and "additional_scan" in out


def test_lm_sdt_is_merged_and_the_state_methods_are_left_out(tmp_path, monkeypatch):
    """SDT folds exactly into A_log and x_proj of the base; state-offset, output-offset and initial-state tuning
    have no PEFT form and do not fold: PEFT reproduces our model without them, exactly."""
    base = _hf_base(tmp_path / "base")
    model = apply_peft(create_model(base), {"methods": {"lora_X": {"rank": 2}, "sdt": {"channel_freeze": 0.5},
                                                        "state_offset": {}, "output_offset": {}, "init_state": {}}})
    end_warmup(model)  # as after training: the selection is made
    perturb_trainable(model, std=0.3)
    info = export_hf_peft(model, tmp_path / "hf")
    assert info["adapter"] == ["lora_X"] and list(info["merged"]) == ["sdt"]
    assert "folded exactly" in info["merged"]["sdt"]
    assert sorted(info["left_out"]) == ["init_state", "output_offset", "state_offset"]
    assert all("not foldable" in why for why in info["left_out"].values())
    without = copy.deepcopy(model)
    for mixer in without.mixers:
        for name in ("state_offset", "output_offset", "init_state"):
            del mixer.peft[name]
    x = tiny_input("lm")
    with torch.no_grad():
        want, full = without.eval()(x)[..., :100], model.eval()(x)[..., :100]
    got = _peft_lm_logits(tmp_path / "hf", x, monkeypatch)
    assert _rel(got, want) <= TOLERANCE < _rel(got, full)


def test_the_bundled_proxy_exports_with_its_padded_vocabulary(tmp_path, monkeypatch):
    """mamba-proxy: a mamba_ssm checkpoint whose vocabulary (258) is padded to 264."""
    model = create_model("mamba-proxy")
    apply_peft(model, {"methods": {"lora_in_proj": {"rank": 2}, "lora_out_proj": {"rank": 2}}})
    perturb_trainable(model, std=0.02)
    x = torch.randint(0, 258, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.eval()(x)
    export_hf_peft(model, tmp_path / "hf", base_name="mamba-proxy")
    got = _peft_lm_logits(tmp_path / "hf", x, monkeypatch)
    print(f"mamba-proxy: relative error {_rel(got, want):.1e}")
    assert got.shape == want.shape == (2, 12, 264) and _rel(got, want) <= TOLERANCE


# -- Vim: PeftModel on our VisionMamba ---------------------------------------------------------------------------
VIM_HYBRID = {
    "lora_embed": {"rank": 2, "scale": 0.5}, "lora_X": {"rank": 2}, "lora_x_proj": {"rank": 2, "scale": 2.0},
    "lora_B": {"rank": 2, "dora": True}, "lora_dt": {"rank": 2}, "lora_out_proj": {"rank": 2},
    "tune_D": {}, "tune_cls_token": {}, "tune_pos_embed": {"mode": "unfreeze"},
}


@pytest.mark.parametrize("with_embed", [True, False], ids=["patch-embed-lora", "all-merged"])
def test_vim_export_loads_with_peft_model(tmp_path, with_embed):
    methods = {k: v for k, v in VIM_HYBRID.items() if with_embed or k != "lora_embed"}
    model = tiny_model("vim")
    apply_peft(model, {"methods": methods})
    perturb_trainable(model)
    x = tiny_input("vim")
    with torch.no_grad():
        want = model.eval()(x)
    info = export_hf_peft(model, tmp_path / "hf")
    assert info["adapter"] == (["lora_embed"] if with_embed else []) and info["left_out"] == {}
    assert set(info["merged"]) == set(methods) - {"lora_embed"}
    assert "Vim mixer reads its weights directly" in info["merged"]["lora_X"]
    config = info["config"]
    assert config["target_modules"] == ["patch_embed.proj"] and config["modules_to_save"] == ["head"]
    assert config["base_model_name_or_path"] == str((tmp_path / "hf" / "base.pth").resolve())

    loaded = peft.PeftModel.from_pretrained(create_model(tmp_path / "hf" / "base.pth"), str(tmp_path / "hf")).eval()
    with torch.no_grad():
        got = loaded(x)
    print(f"vim {'with' if with_embed else 'without'} LoRA(embed): relative error {_rel(got, want):.1e}")
    assert _rel(got, want) <= TOLERANCE
    assert "PeftModel.from_pretrained(hs.create_model" in (tmp_path / "hf" / "README.md").read_text()


# -- Mamba-2: AutoPeftModelForCausalLM on transformers' Mamba2ForCausalLM ------------------------------------------
MAMBA2_HYBRID = {  # every LoRA Mamba-2 has (in_proj's rows: PEFT; out_proj, DoRA, partial tuning: merged)
    "lora_in_proj": {"rank": 2, "scale": 0.5}, "lora_X": {"rank": 2}, "lora_Z": {"rank": 2, "layers": [1]},
    "lora_x_proj": {"rank": 2, "scale": 2.0}, "lora_d": {"rank": 1}, "lora_B": {"rank": 2}, "lora_C": {"rank": 3},
    "lora_out_proj": {"rank": 2}, "lora_embed": {"rank": 2, "scale": 0.5}, "lora_dt": None,
    "tune_A": {}, "tune_norm": {}, "tune_dt_bias": {"mode": "unfreeze"}, "sdt": {"channel_freeze": 0.5},
}


def _hf_mamba2_base(directory: Path) -> Path:
    torch.manual_seed(0)
    config = transformers.Mamba2Config(vocab_size=100, hidden_size=32, num_hidden_layers=2, state_size=8,
                                       head_dim=8, num_heads=8, n_groups=2, expand=2, chunk_size=4, conv_kernel=4,
                                       tie_word_embeddings=True)
    transformers.Mamba2ForCausalLM(config).save_pretrained(directory)
    return directory


def test_mamba2_export_loads_in_peft_and_reproduces_our_logits(tmp_path, monkeypatch):
    methods = {k: v for k, v in MAMBA2_HYBRID.items() if v is not None}  # Mamba-2 has no dt_proj: no lora_dt
    model = apply_peft(create_model(_hf_mamba2_base(tmp_path / "base")), {"methods": methods})
    assert type(model).__name__ == "Mamba2LM"
    end_warmup(model)
    perturb_trainable(model, std=0.3)
    x = tiny_input("lm")
    with torch.no_grad():
        want = model.eval()(x)[..., :100]
    info = export_hf_peft(model, tmp_path / "hf")
    assert info["adapter"] == ["lora_B", "lora_C", "lora_X", "lora_Z", "lora_d", "lora_embed", "lora_in_proj",
                               "lora_x_proj"]
    assert set(info["merged"]) == {"lora_out_proj", "tune_A", "tune_norm", "tune_dt_bias", "sdt"}
    assert info["left_out"] == {}
    assert info["config"]["rank_pattern"]["backbone.layers.1.mixer.in_proj"] == 2 + 2 + 2 + 2 + 1 + 2 + 3
    peft_model = _peft_lm(tmp_path / "hf", monkeypatch)
    assert type(peft_model.base_model.model).__name__ == "Mamba2ForCausalLM"
    with torch.no_grad():
        got = peft_model(input_ids=x).logits
        with peft_model.disable_adapter():
            alone = peft_model(input_ids=x).logits
    print(f"mamba2: relative error {_rel(got, want):.1e}; without the adapter {_rel(alone, want):.1e}")
    assert _rel(got, want) <= TOLERANCE < _rel(alone, want) / 100
