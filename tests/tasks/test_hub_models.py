"""A space may name its model by Hugging Face Hub id: it resolves in the local cache (never downloaded), and an
id that is not cached is one error naming the cache folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hybridsearch.models import MODELS, create_model
from hybridsearch.models.checkpoint import save_mamba
from hybridsearch.search.space import space_from_dict, validate_space

REPO = "someone/tiny-mamba-hf"


def _space(name: str) -> dict:
    return {"model": {"name": name}, "data": {"kind": "commonsense", "tasks": ["boolq"]},
            "methods": {"lora_X": {"params": {"rank": 2}}}}


def test_a_space_names_its_model_by_hub_id(tmp_path, monkeypatch):
    src = tmp_path / "src"
    save_mamba(create_model("mamba-proxy"), src, fmt="hf")
    snapshot = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / ("0" * 40)
    shutil.copytree(src, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report = validate_space(space_from_dict(_space(REPO), source="hub.yaml"))
    assert report.ok, report.errors
    proxy = validate_space(space_from_dict(_space("mamba-proxy"), source="proxy.yaml"))
    assert report.largest["counts"]["trainable"] == proxy.largest["counts"]["trainable"]  # the same model
    assert "mamba-proxy" in MODELS


def test_an_uncached_hub_id_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    report = validate_space(space_from_dict(_space("nobody/not-here"), source="s.yaml"))
    assert not report.ok and "model.name" in report.errors[0] and str(tmp_path / "hub") in report.errors[0]
    with pytest.raises(Exception, match="not-here"):
        create_model("nobody/not-here")
    assert not (tmp_path / "hub").exists() or not any(Path(tmp_path / "hub").iterdir())
