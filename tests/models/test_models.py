"""Models and checkpoints: tiny Vim / Mamba LM forward shapes, the registry on the meta device, and loading
the real on-disk formats (hustvl Vim ``.pth``, mamba_ssm and Hugging Face ``-hf`` directories) safely."""

from __future__ import annotations

import json
import pickle
import re

import pytest
import torch
from conftest import LM_CONFIG, VIM_CONFIG, tiny_input, tiny_model
from safetensors.torch import load_file, save_file

from hybridsearch import MODELS, create_model
from hybridsearch.errors import CheckpointError
from hybridsearch.models import Mamba2Config, Mamba2LM, MambaLM, VisionMamba, model_config
from hybridsearch.models.checkpoint import read_state_dict, save_mamba, save_vim


class NotATensor:
    """An arbitrary object: a pickle holding it needs code to load, which ``weights_only`` must refuse."""

    def __init__(self) -> None:
        self.payload = "would run on unpickling"


def _out(model: torch.nn.Module, kind: str) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(tiny_input(kind))


# -- forward shapes and the registry ---------------------------------------------------------------------------
def test_vim_forward_shape():
    model = tiny_model("vim")
    out = model(torch.randn(3, 3, 16, 16))
    assert out.shape == (3, VIM_CONFIG.num_classes)
    assert model.forward_features(torch.randn(1, 3, 16, 16)).shape == (1, VIM_CONFIG.d_model)


def test_lm_forward_shape_uses_the_padded_vocab():
    model = tiny_model("lm")
    out = model(torch.randint(0, LM_CONFIG.vocab_size, (3, 7)))
    assert LM_CONFIG.padded_vocab == 104  # 100 rounded up to a multiple of 8
    assert out.shape == (3, 7, 104)
    assert model.lm_head.weight is model.backbone.embedding.weight


def test_vim_state_dict_has_the_hustvl_keys():
    keys = set(tiny_model("vim").state_dict())
    for k in ("patch_embed.proj.weight", "cls_token", "pos_embed", "norm_f.weight", "head.weight", "head.bias",
              "layers.1.norm.weight"):
        assert k in keys
    for k in ("in_proj.weight", "conv1d.weight", "conv1d_b.bias", "x_proj.weight", "x_proj_b.weight",
              "dt_proj.bias", "dt_proj_b.weight", "A_log", "A_b_log", "D", "D_b", "out_proj.weight"):
        assert f"layers.0.mixer.{k}" in keys


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_builds_on_meta(name):
    spec = MODELS.get(name)
    model = create_model(name, device="meta")
    c = spec.config
    mamba2 = isinstance(c, Mamba2Config)
    assert isinstance(model, VisionMamba if spec.kind == "vim" else Mamba2LM if mamba2 else MambaLM)
    assert all(p.is_meta for p in model.parameters())
    depth = c.depth if spec.kind == "vim" else c.n_layer
    assert len(model.mixers) == depth
    # Mamba-2's in_proj also makes B, C (per group) and dt (per head)
    extra = 2 * c.ngroups * c.d_state + c.d_inner // c.headdim if mamba2 else 0
    assert model.mixers[0].in_proj.weight.shape == (2 * c.expand * c.d_model + extra, c.d_model)
    if spec.kind == "vim":
        assert create_model(name, device="meta", num_classes=7).head.weight.shape == (7, spec.config.d_model)


def test_unknown_model_lists_the_choices():
    with pytest.raises(CheckpointError, match="vim-small"):
        create_model("vim-huge")


# -- Vim checkpoints -------------------------------------------------------------------------------------------
@pytest.fixture
def vim_and_file(tmp_path):
    model = tiny_model("vim", seed=4)
    return model, save_vim(model, tmp_path / "vim_t.pth")


def test_save_vim_writes_a_model_dict(vim_and_file):
    model, path = vim_and_file
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"model"}
    assert set(raw["model"]) == set(model.state_dict())


def _resave(path, tmp_path, *, prefix: str, wrap: bool, legacy: bool, suffix: str = ".pth"):
    sd = {prefix + k: v for k, v in read_state_dict(path).items()}
    out = tmp_path / f"resaved{suffix}"
    obj = {"model": sd} if wrap else sd
    torch.save(obj, out, _use_new_zipfile_serialization=not legacy)
    return out


@pytest.mark.parametrize(("prefix", "wrap", "legacy"), [
    ("", True, False), ("module.", True, False), ("module.", False, True), ("", False, False), ("module.", True, True),
], ids=["model-dict", "module-prefix", "plain-pickle-prefixed", "flat", "legacy-model-dict"])
def test_create_model_from_a_vim_file(vim_and_file, tmp_path, prefix, wrap, legacy):
    model, path = vim_and_file
    resaved = _resave(path, tmp_path, prefix=prefix, wrap=wrap, legacy=legacy)
    loaded = create_model(resaved)
    assert isinstance(loaded, VisionMamba)
    assert loaded.cfg.d_model == 16 and loaded.cfg.depth == 2 and loaded.cfg.d_state == 4
    assert loaded.cfg.img_size == 16 and loaded.cfg.patch_size == 4 and loaded.cfg.num_classes == 5
    torch.testing.assert_close(_out(loaded, "vim"), _out(model, "vim"), atol=0, rtol=0)


def test_create_model_from_vim_safetensors(vim_and_file, tmp_path):
    model, _ = vim_and_file
    path = tmp_path / "vim.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    torch.testing.assert_close(_out(create_model(path), "vim"), _out(model, "vim"), atol=0, rtol=0)


def test_num_classes_replaces_the_head(vim_and_file):
    model, path = vim_and_file
    loaded = create_model(path, num_classes=3)
    assert loaded.head.weight.shape == (3, 16)
    assert _out(loaded, "vim").shape == (2, 3)
    x = tiny_input("vim")
    with torch.no_grad():  # everything but the head came from the file
        torch.testing.assert_close(loaded.eval().forward_features(x), model.eval().forward_features(x), atol=0, rtol=0)
    same = create_model(path, num_classes=5)  # a class count means a new task: fresh zero head even at equal size
    assert torch.count_nonzero(same.head.weight) == 0
    kept = create_model(path)  # no class count: the checkpoint's own head (deployment)
    torch.testing.assert_close(_out(kept, "vim"), _out(model, "vim"), atol=0, rtol=0)


def test_registered_name_with_a_checkpoint(vim_and_file):
    _, path = vim_and_file
    with pytest.raises(CheckpointError, match=re.escape("cls_token: checkpoint (1, 1, 16) vs model (1, 1, 384)")):
        create_model("vim-small", checkpoint=path)  # a Vim-S does not fit the tiny weights


def _edited(path, tmp_path, edit) -> str:
    sd = read_state_dict(path)
    edit(sd)
    out = tmp_path / "edited.pth"
    torch.save({"model": sd}, out)
    return out


def test_wrong_shapes_are_listed(vim_and_file, tmp_path):
    _, path = vim_and_file

    def edit(sd):
        sd["layers.0.mixer.D"] = torch.ones(5)
        sd["layers.1.mixer.out_proj.weight"] = torch.zeros(16, 7)

    with pytest.raises(CheckpointError) as err:
        create_model(_edited(path, tmp_path, edit))
    msg = str(err.value)
    assert "shape mismatches" in msg
    assert "layers.0.mixer.D: checkpoint (5,) vs model (32,)" in msg
    assert "layers.1.mixer.out_proj.weight" in msg


def test_missing_and_unexpected_keys_are_listed(vim_and_file, tmp_path):
    _, path = vim_and_file

    def edit(sd):
        del sd["layers.1.mixer.D_b"], sd["norm_f.weight"]
        sd["layers.0.mixer.lora.weight"] = torch.zeros(1)

    with pytest.raises(CheckpointError) as err:
        create_model(_edited(path, tmp_path, edit))
    msg = str(err.value)
    assert "missing keys: layers.1.mixer.D_b, norm_f.weight" in msg
    assert "unexpected keys: layers.0.mixer.lora.weight" in msg


def test_not_a_vim_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not a Vim checkpoint"):
        create_model(path)


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.0], ids=["half", "tenth", "empty"])
def test_truncated_file(vim_and_file, tmp_path, keep):
    _, path = vim_and_file
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=re.escape(str(cut))):
        create_model(cut)


def test_truncated_safetensors(vim_and_file, tmp_path):
    model, _ = vim_and_file
    path = tmp_path / "vim.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        create_model(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickle_with_code_is_refused(vim_and_file, tmp_path, legacy):
    _, path = vim_and_file
    sd = read_state_dict(path)
    evil = tmp_path / "evil.pth"
    torch.save({"model": sd, "extra": NotATensor()}, evil, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="refused to load") as err:
        create_model(evil)
    msg = str(err.value)
    assert "test_models.NotATensor" in msg and "\x1b" not in msg and "\n" not in msg
    plain = tmp_path / "plain.pkl"  # a raw pickle (protocol 4) is refused too
    plain.write_bytes(pickle.dumps({"model": NotATensor()}))
    with pytest.warns(UserWarning, match="pickle protocol"), pytest.raises(CheckpointError, match="refused to load"):
        create_model(plain)


def test_non_tensor_values_are_refused(tmp_path):
    path = tmp_path / "numbers.pth"
    torch.save({"model": {"a": 1}}, path)
    with pytest.raises(CheckpointError, match="not a state dict of tensors"):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")


def test_model_config_reads_shapes_only(vim_and_file):
    _, path = vim_and_file
    cfg = model_config(path, num_classes=9)
    assert (cfg.d_model, cfg.depth, cfg.num_classes, cfg.dt_rank) == (16, 2, 9, 1)


# -- Mamba LM checkpoints --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["mamba_ssm", "hf"])
def test_lm_round_trip(tmp_path, fmt):
    model = tiny_model("lm", seed=5)
    directory = save_mamba(model, tmp_path / fmt, fmt=fmt)
    loaded = create_model(directory)
    assert isinstance(loaded, MambaLM)
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight  # still tied after loading
    assert loaded.cfg.padded_vocab == model.cfg.padded_vocab
    torch.testing.assert_close(_out(loaded, "lm"), _out(model, "lm"), atol=0, rtol=0)
    if fmt == "hf":
        keys = set(load_file(str(directory / "model.safetensors")))
        assert "backbone.embeddings.weight" in keys and "lm_head.weight" not in keys
        assert not any(k.startswith("backbone.embedding.") for k in keys)
        conf = json.loads((directory / "config.json").read_text())
        assert conf["vocab_size"] == 104 and conf["hidden_size"] == 16 and conf["tie_word_embeddings"]
    else:
        conf = json.loads((directory / "config.json").read_text())
        assert conf["vocab_size"] == 100 and conf["d_model"] == 16 and conf["pad_vocab_size_multiple"] == 8
    again = create_model("mamba-130m", checkpoint=directory)  # a registered name with an explicit checkpoint
    torch.testing.assert_close(_out(again, "lm"), _out(model, "lm"), atol=0, rtol=0)


def test_hf_checkpoint_with_an_explicit_head(tmp_path):
    model = tiny_model("lm", seed=6)
    directory = save_mamba(model, tmp_path / "hf", fmt="hf")
    sd = load_file(str(directory / "model.safetensors"))
    sd["lm_head.weight"] = sd["backbone.embeddings.weight"].clone()
    save_file(sd, str(directory / "model.safetensors"))
    torch.testing.assert_close(_out(create_model(directory), "lm"), _out(model, "lm"), atol=0, rtol=0)


def test_lm_directory_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        create_model(empty)
    directory = save_mamba(tiny_model("lm"), tmp_path / "ssm")
    (directory / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors or pytorch_model.bin"):
        create_model(directory)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json:1: invalid JSON \(column 2\)"):
        create_model(directory)
    (directory / "config.json").write_text(json.dumps({"d_model": 16}))
    with pytest.raises(CheckpointError, match="n_layer"):
        create_model(directory)


def test_lm_wrong_shapes(tmp_path):
    directory = save_mamba(tiny_model("lm"), tmp_path / "ssm")
    conf = json.loads((directory / "config.json").read_text())
    conf["ssm_cfg"]["d_state"] = 8
    (directory / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError) as err:
        create_model(directory)
    assert "shape mismatches" in str(err.value)
    assert "backbone.layers.0.mixer.A_log: checkpoint (32, 16) vs model (32, 8)" in str(err.value)


def test_lm_pickle_with_code_is_refused(tmp_path):
    directory = save_mamba(tiny_model("lm"), tmp_path / "ssm")
    torch.save({"backbone.embedding.weight": NotATensor()}, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused to load"):
        create_model(directory)
