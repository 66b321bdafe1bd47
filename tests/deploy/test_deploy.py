"""Deployment round trip: ``export --retrain`` -> ``hybridsearch apply`` in a fresh process -> the same predictions
on the task's test images, as a bundle (base + adapters, bit-exact), as a merged plain checkpoint of the base's
own format and as a Hugging Face PEFT folder loaded by the real ``peft``; the LM in mamba_ssm and HF layouts
(the PEFT export of every hybrid: test_hf_peft_roundtrip.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import perturb_trainable, tiny_input, tiny_model
from safetensors.torch import load_file

from hybridsearch.cli import main
from hybridsearch.deploy import apply_adapters, export_hf_peft, load_model, write_model
from hybridsearch.models import create_model
from hybridsearch.models.checkpoint import save_mamba, save_vim
from hybridsearch.peft import apply_peft, load_adapters, save_adapters

optuna.logging.set_verbosity(optuna.logging.WARNING)

# every LoRA flavour PEFT can express (activation branch, merged weight, row slice, both Vim directions, conv),
# plus three it cannot (DoRA, partial tuning, sparse dimension tuning, whose warm-up runs inside the training):
# all mergeable, so the same adapters also fold into one checkpoint
METHODS = {
    "lora_X": {"optional": False, "params": {"rank": 2, "scale": 0.5}},
    "lora_B": {"optional": False, "params": {"rank": 2, "scale": 0.5}},
    "lora_x_proj": {"optional": False, "params": {"rank": 2, "scale": 0.25}},
    "lora_dt": {"optional": False, "params": {"rank": 2, "scale": 1.0}},
    "lora_out_proj": {"optional": False, "params": {"rank": 3, "scale": 0.5}},
    "lora_embed": {"optional": False, "params": {"rank": 2, "scale": 1.0}},
    "lora_C": {"optional": False, "params": {"rank": 2, "dora": True}},
    "tune_D": {"optional": False},
    "sdt": {"optional": False, "params": {"channel_freeze": 0.9, "warmup_steps": 1}},
}


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-task mini-VTAB slice of test_engine.py (same folder: built once per session)."""
    from hybridsearch.data.mini_vtab import ensure_mini_vtab

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "hybridsearch-data"))
        return ensure_mini_vtab(tasks=["mnist5k"], n_test=200)


@pytest.fixture(scope="module")
def exported(mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One search trial, then ``export --retrain`` (on 64 of the 1,000 images, to stay short)."""
    from hybridsearch.tasks import vision as train  # the vision family trains trials and the winner

    tmp = tmp_path_factory.mktemp("deploy")
    space = {
        "model": {"name": "vim-proxy"},
        "data": {"kind": "mini_vtab", "tasks": ["mnist5k"], "root": str(mini_root)},
        "objectives": ["accuracy"], "trials": 1,
        "fidelity": {"epochs": 1, "max_train_examples": 32, "max_val_examples": 32},
        "sampler": {"kind": "random", "seed": 0},
        "recipe": {"lr": 1.0e-2, "batch_size": 32, "warmup_epochs": 0},
        "methods": METHODS,
    }
    (tmp / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    storage, out = str(tmp / "j.journal"), tmp / "winner"
    real = train.train_classifier
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDSEARCH_DATA_DIR", str(mini_root.parent))
        mp.setattr(train, "train_classifier",
                   lambda model, data, val, recipe, **kw: real(model, (data[0][:64], data[1][:64]), val, recipe, **kw))
        assert main(["run", "--space", str(tmp / "space.yaml"), "--study", "dep", "--storage", storage,
                     "--out", str(tmp / "run")]) == 0
        assert main(["export", "dep", "--storage", storage, "--out", str(out), "--retrain"]) == 0
    res = json.loads((out / "meta.json").read_text())["retrain"]["mnist5k"]
    return {"tmp": tmp, "adapters": Path(res["adapters"]), "test_accuracy": res["test_accuracy"],
            "root": mini_root}


def _test_images(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from hybridsearch.data.vtab import load_split, normalize

    X, y = load_split(root, "mnist5k", "test", 32)
    return normalize(X), y


@torch.no_grad()
def _logits(model: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    return model.eval()(X)


def _vim_base() -> Path:
    from hybridsearch.models import MODELS

    return MODELS.get("vim-proxy").checkpoint()  # the bundled hustvl-format .pth


def test_retrain_apply_in_a_fresh_process_reproduces_predictions(exported):
    from hybridsearch.training.classifier import evaluate

    X, y = _test_images(exported["root"])
    ref = load_adapters(create_model("vim-proxy", num_classes=10), exported["adapters"])  # the exported model
    assert evaluate(ref, X, y) == exported["test_accuracy"]  # what export --retrain trained and tested
    want = _logits(ref, X)

    merged, hf = exported["tmp"] / "merged.pth", exported["tmp"] / "hf"
    cmd = [sys.executable, "-m", "hybridsearch.cli", "apply", "--base", str(_vim_base()), "--adapters",
           str(exported["adapters"]), "--merge", "--out", str(merged), "--hf-peft", str(hf), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["merged"] and summary["format"] == "hustvl"
    hf_summary = summary["hf_peft"]  # our Vim mixer reads its weights: only the patch embedding is PEFT's
    assert hf_summary["adapter"] == ["lora_embed"] and hf_summary["left_out"] == {}
    assert set(hf_summary["merged"]) == set(METHODS) - {"lora_embed"}  # mixer LoRAs, DoRA, partial: in the base

    plain = create_model(merged)  # a plain hustvl checkpoint of the base architecture
    assert set(torch.load(merged, weights_only=True)) == {"model"}
    assert not any("peft" in k for k in plain.state_dict())
    got = _logits(plain, X)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(-1), want.argmax(-1))  # the same predictions, image for image

    bundle = exported["tmp"] / "bundle"
    assert main(["apply", "--base", "vim-proxy", "--adapters", str(exported["adapters"]), "--out", str(bundle)]) == 0
    assert torch.equal(_logits(load_model(bundle), X), want)  # unmerged: bit-exact


# -- Hugging Face PEFT format ----------------------------------------------------------------------------------------
def test_hf_peft_folder_reproduces_the_test_predictions(exported):
    """The folder `apply --hf-peft` wrote above, loaded by the real peft on the base written beside it."""
    peft = pytest.importorskip("peft")
    X, _ = _test_images(exported["root"])
    want = _logits(load_adapters(create_model("vim-proxy", num_classes=10), exported["adapters"]), X)
    hf = exported["tmp"] / "hf"
    config = json.loads((hf / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["head"] and config["target_modules"] == ["patch_embed.proj"]
    model = peft.PeftModel.from_pretrained(create_model(hf / "base.pth"), str(hf))
    got = _logits(model, X)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_hf_row_slice_is_a_full_lora_with_zero_rows(tmp_path):
    model = tiny_model("lm")
    apply_peft(model, {"methods": {"lora_B": {"rank": 2, "scale": 0.5}, "lora_x_proj": {"rank": 3, "scale": 2.0},
                                   "affix": {"tokens": 1}}})
    perturb_trainable(model)
    info = export_hf_peft(model, tmp_path)
    assert set(info["left_out"]) == {"affix"} and "affix" in (tmp_path / "README.md").read_text()
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    m = model.mixers[0]
    R, N = m.dt_rank, m.d_state
    B = tensors["base_model.model.backbone.layers.0.mixer.x_proj.lora_B.weight"]  # canonical order: x_proj, B
    assert B.shape == (R + 2 * N, 5)
    rows_b = torch.zeros(R + 2 * N, dtype=torch.bool)
    rows_b[R:R + N] = True
    assert (B[~rows_b, 3:] == 0).all() and (B[rows_b, 3:] != 0).all()
    cfg = info["config"]
    assert cfg["alpha_pattern"]["backbone.layers.0.mixer.x_proj"] == 5.0  # scales differ: folded into B, alpha/r 1


# -- the LM in both checkpoint layouts -------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["mamba_ssm", "hf"])
def test_lm_merge_writes_the_base_format(tmp_path, fmt):
    base = tmp_path / "base"
    save_mamba(tiny_model("lm"), base, fmt)
    trained = create_model(base)
    apply_peft(trained, {"methods": {"lora_in_proj": {"rank": 2}, "lora_C": {"rank": 2, "scale": 0.5},
                                     "lora_out_proj": {"rank": 2}, "tune_A": {}}})
    perturb_trainable(trained)
    save_adapters(trained, tmp_path / "ad")
    x = tiny_input("lm")
    want = _logits(trained, x)

    out = tmp_path / "merged"
    assert main(["apply", "--base", str(base), "--adapters", str(tmp_path / "ad"), "--merge", "--out", str(out)]) == 0
    assert (out / ("model.safetensors" if fmt == "hf" else "pytorch_model.bin")).is_file()
    torch.testing.assert_close(_logits(create_model(out), x), want, rtol=1e-5, atol=1e-5)
    bundle = write_model(apply_adapters(base, tmp_path / "ad"), tmp_path / "bundle")
    assert (bundle / "base" / "config.json").is_file()
    assert torch.equal(_logits(load_model(bundle), x), want)


# -- refusals ----------------------------------------------------------------------------------------------------
def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hybridsearch apply: error:")
    return err


def test_merge_refuses_unfoldable_methods_before_writing(tmp_path, capsys):
    model = tiny_model("vim")
    apply_peft(model, {"methods": {"lora_X": {"rank": 2}, "affix": {"tokens": 1}}})
    save_adapters(model, tmp_path / "ad")
    save_vim(tiny_model("vim"), tmp_path / "base.pth")
    err = _error(capsys, ["apply", "--base", str(tmp_path / "base.pth"), "--adapters", str(tmp_path / "ad"),
                          "--merge", "--out", str(tmp_path / "m.pth"), "--hf-peft", str(tmp_path / "hf")])
    assert "affix" in err and "without --merge" in err
    assert not (tmp_path / "m.pth").exists() and not (tmp_path / "hf").exists()


def test_adapters_for_another_architecture(tmp_path, capsys):
    model = tiny_model("vim")
    apply_peft(model, {"methods": {"lora_X": {"rank": 2}}})
    save_adapters(model, tmp_path / "ad")
    err = _error(capsys, ["apply", "--base", "vim-proxy", "--adapters", str(tmp_path / "ad"), "--out",
                          str(tmp_path / "o")])
    assert "does not match the adapters" in err and str(tmp_path / "ad") in err
    err = _error(capsys, ["apply", "--base", "vim-proxy", "--adapters", str(tmp_path / "none"), "--out",
                          str(tmp_path / "o")])
    assert "adapter_meta.json" in err and "export --retrain" in err
    err = _error(capsys, ["apply", "--base", "mamba-130m", "--adapters", str(tmp_path / "ad"), "--out",
                          str(tmp_path / "o")])
    assert "no bundled weights" in err  # a random-init base is never deployed by mistake
    assert not (tmp_path / "o").exists()


def test_hostile_adapter_metadata_is_one_line(tmp_path, capsys):
    """adapter_meta.json is read with limits and compared with the base's config, never built from."""
    model = tiny_model("vim")
    apply_peft(model, {"methods": {"lora_X": {"rank": 2}}})
    save_vim(tiny_model("vim"), tmp_path / "base.pth")
    meta_file = save_adapters(model, tmp_path / "ad") / "adapter_meta.json"
    meta = json.loads(meta_file.read_text())
    argv = ["apply", "--base", str(tmp_path / "base.pth"), "--adapters", str(tmp_path / "ad"), "--out",
            str(tmp_path / "o")]
    for text, words in (
        ("[" * 100_000 + "]" * 100_000, ["adapter_meta.json", "nested too deeply"]),
        (json.dumps({**meta, "architecture": {**meta["architecture"], "depth": 10**12}}), ["depth", "vs"]),
        (json.dumps({**meta, "architecture": {**meta["architecture"], "n_heads": 4}}), ["unknown: n_heads"]),
        (json.dumps({**meta, "architecture": "vim"}), ["not adapter metadata", "'architecture' mapping"]),
    ):
        meta_file.write_text(text)
        err = _error(capsys, argv)
        assert all(w in err for w in words), err
    assert not (tmp_path / "o").exists()


def test_a_converted_hf_folder_is_written_back_as_hf(tmp_path):
    """Converted -hf configs carry mamba_ssm's d_model too: their model_type decides the format."""
    from hybridsearch.deploy import base_format
    from hybridsearch.models import MambaConfig, build

    lm = build(MambaConfig(d_model=16, n_layer=2, vocab_size=100))
    save_mamba(lm, tmp_path / "hf", fmt="hf")
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**conf, "d_model": 16, "n_layer": 2}))
    assert base_format(tmp_path / "hf") == "hf"
    save_mamba(lm, tmp_path / "ssm")
    assert base_format(tmp_path / "ssm") == "mamba_ssm"
