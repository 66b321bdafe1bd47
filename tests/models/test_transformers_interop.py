"""Meeting transformers users where they are, with the real libraries (no mocks): checkpoints that transformers
writes (non-default settings, sharded) and mamba_ssm's layout load with the logits of the model that wrote them;
what hybridsearch does not build is refused in one line; transformers objects convert exactly; a Hub id loads from
a cache folder in the real layout without any network, and is named clearly when it is not cached."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybridsearch import create_model
from hybridsearch.cli import main
from hybridsearch.errors import CheckpointError, ConfigError
from hybridsearch.models import MambaLM, model_config
from hybridsearch.peft import apply_peft, count_parameters

transformers = pytest.importorskip("transformers")
TOLERANCE = 1e-5  # relative: max |ours - transformers'| / max |transformers'| (measured about 1e-7)
NON_DEFAULT = {  # every shape-giving setting away from its default at once, plus the norm's epsilon
    "state_size": 8, "conv_kernel": 3, "expand": 3, "time_step_rank": 5, "layer_norm_epsilon": 1e-3,
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers.utils.logging.set_verbosity_error()


def _transformers_lm(seed: int = 0, **settings) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.MambaConfig(**{"vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 2, **settings})
    return transformers.MambaForCausalLM(config).eval()


def _tokens() -> torch.Tensor:
    return torch.randint(0, 100, (2, 11), generator=torch.Generator().manual_seed(1))


def _rel(ours: torch.nn.Module, theirs: torch.nn.Module) -> float:
    x = _tokens()
    with torch.no_grad():
        want = theirs.eval()(input_ids=x).logits
        got = ours.eval()(x)[..., : want.shape[-1]]
    return float((got - want).abs().max() / want.abs().max())


# -- checkpoints written by transformers and in mamba_ssm's layout ----------------------------------------------
@pytest.mark.parametrize("settings", [{}, NON_DEFAULT, {"time_step_rank": 2, "expand": 1, "hidden_act": "swish",
                                                        "use_cache": False, "rescale_prenorm_residual": True}],
                         ids=["defaults", "non-default-shapes", "runtime-keys"])
def test_checkpoints_written_by_transformers_load_exactly(tmp_path, settings):
    theirs = _transformers_lm(**settings)
    theirs.save_pretrained(tmp_path)
    ours = create_model(tmp_path)
    cfg = ours.cfg
    assert (cfg.d_state, cfg.d_conv, cfg.expand) == (theirs.config.state_size, theirs.config.conv_kernel,
                                                     theirs.config.expand)
    assert ours.mixers[0].dt_rank == theirs.config.time_step_rank and cfg.eps == theirs.config.layer_norm_epsilon
    assert model_config(tmp_path) == cfg  # what `count` reads: config.json only
    assert _rel(ours, theirs) <= TOLERANCE


def test_a_sharded_checkpoint_loads(tmp_path):
    theirs = _transformers_lm(**NON_DEFAULT)
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    assert _rel(create_model(tmp_path), theirs) <= TOLERANCE
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"]["backbone.norm_f.weight"] = "../elsewhere.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"shard '\.\./elsewhere\.safetensors' is not a file name"):
        create_model(tmp_path)


REFUSED = {  # what transformers writes for a model hybridsearch does not build: the key, in one line
    "untied-head": ({"tie_word_embeddings": False}, "tie_word_embeddings: False is not supported"),
    "projection-bias": ({"use_bias": True}, "use_bias: True is not supported"),
    "no-conv-bias": ({"use_conv_bias": False}, "use_conv_bias: False is not supported"),
    "gelu": ({"hidden_act": "gelu"}, "hidden_act: 'gelu' is not supported; allowed: silu, swish"),
    "residual-in-half": ({"residual_in_fp32": False}, "residual_in_fp32: False is not supported"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_settings_hybridsearch_does_not_build_are_refused(tmp_path, case):
    settings, expected = REFUSED[case]
    theirs = _transformers_lm(**settings)
    theirs.save_pretrained(tmp_path)
    for load in (create_model, lambda p: create_model(theirs)):  # the folder and the object alike
        with pytest.raises(CheckpointError) as e:
            load(tmp_path)
        assert expected in str(e.value) and "\n" not in str(e.value)


def test_mamba2_builds_its_own_architecture(tmp_path, capsys):
    """A Mamba2Config folder or object builds hybridsearch's Mamba2LM (tests/models/test_mamba2.py checks its
    logits); apply_peft, which converts Mamba-1 objects only, names the model type in one line."""
    config = transformers.Mamba2Config(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_heads=4,
                                       head_dim=8, n_groups=1)
    config.save_pretrained(tmp_path)
    capsys.readouterr()
    assert main(["count", "--model", str(tmp_path), "--json"]) == 0
    torch.manual_seed(0)
    theirs = transformers.Mamba2ForCausalLM(config)
    assert json.loads(capsys.readouterr().out)["base"] == sum(p.numel() for p in theirs.parameters())
    assert type(create_model(theirs)).__name__ == "Mamba2LM"
    with pytest.raises(CheckpointError, match="model_type: 'mamba2' is not supported") as e:
        apply_peft(theirs, {"methods": {"lora_embed": {}}})
    assert "\n" not in str(e.value)


def test_mamba_ssm_layout_with_non_default_settings(tmp_path):
    """Every key mamba_ssm's MambaConfig writes (its save_pretrained dumps the dataclass), non-default ssm_cfg
    and a padded vocabulary; the weights are transformers' under mamba_ssm's names."""
    theirs = _transformers_lm(**{**NON_DEFAULT, "layer_norm_epsilon": 1e-5}, vocab_size=104)
    config = {"d_model": 16, "d_intermediate": 0, "n_layer": 2, "vocab_size": 100,
              "ssm_cfg": {"layer": "Mamba1", "d_state": 8, "d_conv": 3, "expand": 3, "dt_rank": 5},
              "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
              "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone() for k, v in theirs.state_dict().items()}
    torch.save(sd, tmp_path / "pytorch_model.bin")
    ours = create_model(tmp_path)
    assert ours.cfg.padded_vocab == 104 and ours.mixers[0].dt_rank == 5
    assert _rel(ours, theirs) <= TOLERANCE


# -- transformers objects ----------------------------------------------------------------------------------------
def test_create_model_converts_a_transformers_model_exactly():
    theirs = _transformers_lm(**NON_DEFAULT)
    ours = create_model(theirs)
    assert isinstance(ours, MambaLM) and ours.cfg.eps == 1e-3
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k.replace("embeddings", "embedding")], v)
    assert _rel(ours, theirs) <= TOLERANCE
    from_sd = create_model(theirs.state_dict())  # shapes give the architecture; eps is not in a state dict
    assert from_sd.cfg.d_state == 8 and from_sd.cfg.d_conv == 3 and from_sd.mixers[0].dt_rank == 5
    assert from_sd.cfg.eps == 1e-5
    fresh = create_model(theirs.config)  # a config: the architecture, randomly initialised
    assert fresh.cfg == ours.cfg
    assert create_model(theirs.config, device="meta").lm_head.weight.is_meta


def test_apply_peft_takes_a_transformers_model():
    theirs = _transformers_lm(**NON_DEFAULT)
    ours = apply_peft(theirs, {"methods": {"lora_X": {"rank": 2}, "lora_dt": {"rank": 2}}})
    assert isinstance(ours, MambaLM) and ours is not theirs
    assert count_parameters(ours)["by_method"]["lora_X"] > 0
    assert all(p.requires_grad for p in theirs.parameters())  # the transformers object is left as it was
    assert _rel(ours, theirs) <= TOLERANCE  # zero-initialised adapters: the same function


def test_other_objects_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="^apply_peft: expects a model from hybridsearch.create_model or a "
                                          "transformers MambaForCausalLM, got a Linear$"):
        apply_peft(torch.nn.Linear(2, 2), {"methods": {"lora_X": {}}})
    with pytest.raises(CheckpointError, match="not a model hybridsearch converts"):
        create_model(_transformers_lm().backbone)  # MambaModel: no LM head
    with pytest.raises(CheckpointError, match="expected a registered name"):
        create_model(3)


# -- the local Hugging Face cache ---------------------------------------------------------------------------------
def _cache(root: Path, repo_id: str, source: Path) -> Path:
    """A cache folder as huggingface_hub writes it: files in blobs/, the snapshot made of links to them."""
    folder = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir()
    for i, f in enumerate(sorted(source.iterdir())):
        blob = folder / "blobs" / f"{i:064x}"
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(autouse=True)
def _fresh_count_templates(monkeypatch):
    """count keeps one meta model per name; here the same id resolves in different caches."""
    from hybridsearch.peft import counting

    monkeypatch.setattr(counting, "_TEMPLATES", {})


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("env", ["HF_HUB_CACHE", "HF_HOME"])
def test_a_hub_id_loads_from_the_local_cache(tmp_path, monkeypatch, capsys, no_network, env):
    theirs = _transformers_lm(**NON_DEFAULT)
    theirs.save_pretrained(tmp_path / "src")
    hub = tmp_path / "cache" / ("hub" if env == "HF_HOME" else "")
    snapshot = _cache(hub, "state-spaces/mamba-130m-hf", tmp_path / "src")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(env, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert _rel(create_model("state-spaces/mamba-130m-hf"), theirs) <= TOLERANCE
    from hybridsearch.deploy import base_format  # what `apply --base ID` writes back

    assert base_format("state-spaces/mamba-130m-hf") == "hf"
    from huggingface_hub import snapshot_download  # the real library finds the same snapshot

    assert Path(snapshot_download("state-spaces/mamba-130m-hf", cache_dir=hub, local_files_only=True)) == snapshot
    capsys.readouterr()
    assert main(["count", "--model", "state-spaces/mamba-130m-hf", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["base"] == sum(p.numel() for p in theirs.parameters())  # tied once


def test_a_hub_id_not_in_the_cache_is_one_line(tmp_path, monkeypatch, capsys, no_network):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "hub" / "models--state-spaces--mamba-130m-hf"
    capsys.readouterr()
    assert main(["count", "--model", "state-spaces/mamba-130m-hf"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'state-spaces/mamba-130m-hf'" in err
    assert "not in the local Hugging Face cache" in err and str(folder) in err
    assert "never downloads" in err and "hf download state-spaces/mamba-130m-hf" in err
    (folder / "snapshots" / "0123456789abcdef0123456789abcdef01234567").mkdir(parents=True)  # an interrupted copy
    with pytest.raises(CheckpointError, match="has no config.json"):
        create_model("state-spaces/mamba-130m-hf")


def test_importing_hybridsearch_needs_none_of_the_hf_extra():
    code = ("import sys, hybridsearch, hybridsearch.models, hybridsearch.deploy, hybridsearch.peft\n"
            "loaded = [m for m in ('transformers', 'peft', 'huggingface_hub') if m in sys.modules]\n"
            "assert not loaded, loaded")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
