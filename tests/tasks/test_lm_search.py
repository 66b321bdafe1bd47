"""A tiny search on the LM path end to end: ``hybridsearch run`` on a bundled commonsense space (mamba_commonsense on
mamba-proxy, mamba2_commonsense on the Mamba-2 mamba2-proxy) -> ``show`` -> ``export --retrain`` (adapters + merged
checkpoint, test files scored once) -> the adapters reload and score the same test accuracy through
``hybridsearch evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hybridsearch.cli import main
from hybridsearch.data.commonsense import BUNDLED_ROOT, TRAIN_FILE
from hybridsearch.models import MODELS

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
# per bundled LM space: a tiny method set (one LoRA always, a method that cannot be merged optional)
TINY_METHODS = {
    "mamba_commonsense": {"lora_X": {"optional": False, "params": {"rank": {"int": [2, 4], "step": 2}, "scale": 0.5}},
                          "additional_scan": {"optional": True, "params": {"states": 1, "position": "prefix"}}},
    "mamba2_commonsense": {"lora_B": {"optional": False, "params": {"rank": {"int": [2, 4], "step": 2}, "scale": 0.5}},
                           "tune_norm": {"optional": True, "params": {}},
                           "additional_scan": {"optional": True, "params": {"states": 1}}},
}


@pytest.fixture()
def tiny_root(tmp_path: Path) -> Path:
    """boolq + piqa only: 8 training records each, 4 test records each, from the bundled task set."""
    root = tmp_path / "cs"
    train = json.loads((BUNDLED_ROOT / TRAIN_FILE).read_text())
    keep = [r for r in train if "true or false" in r["instruction"]][:8]
    keep += [r for r in train if "Answer format: solution1" in r["instruction"]][:8]
    root.mkdir()
    (root / TRAIN_FILE).write_text(json.dumps(keep))
    for task in ("boolq", "piqa"):
        (root / "dataset" / task).mkdir(parents=True)
        test = json.loads((BUNDLED_ROOT / "dataset" / task / "test.json").read_text())[:4]
        (root / "dataset" / task / "test.json").write_text(json.dumps(test))
    return root


@pytest.mark.parametrize("name", list(TINY_METHODS))
def test_tiny_lm_search_export_and_reload(tmp_path: Path, tiny_root: Path, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    space = yaml.safe_load((SPACES / f"{name}.yaml").read_text())
    model = space["model"]["name"]
    space["data"].update(root=str(tiny_root), tasks=["boolq", "piqa"])
    space.pop("final", None)  # two search trials, no re-trainings (final has its own tests)
    space["fidelity"].update(max_train_examples=8, max_val_examples=4)
    space["recipe"]["batch_size"] = 4
    space["methods"] = TINY_METHODS[name]
    path = tmp_path / "tiny_lm.yaml"
    path.write_text(yaml.safe_dump(space))
    storage = str(tmp_path / "journal")
    assert main(["run", "--space", str(path), "--study", "lm", "--storage", storage, "--trials", "2",
                 "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert main(["show", "lm", "--storage", storage, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["summary"]["states"] == {"COMPLETE": 2} and shown["summary"]["pareto_front"]
    win = tmp_path / "winner"
    assert main(["export", "lm", "--storage", storage, "--out", str(win), "--retrain"]) == 0
    meta = json.loads((win / "meta.json").read_text())
    (task, entry), = meta["retrain"].items()
    assert set(task.split("+")) == {"boolq", "piqa"} and Path(entry["adapters"]).is_dir()
    assert entry["merged"] is None or Path(entry["merged"]).is_dir()  # Additional-scan cannot be folded
    capsys.readouterr()
    arch = json.loads((Path(entry["adapters"]) / "adapter_meta.json").read_text())["architecture"]
    assert arch == json.loads(json.dumps(MODELS.get(model).config.to_dict()))  # adapters for this space's model
    assert main(["evaluate", "--model", model, "--adapters", entry["adapters"], "--data-root",
                 str(tiny_root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the mixed test set is 4 boolq + 4 piqa records: the retrain score is their pooled accuracy
    pooled = sum(t["correct"] for t in out["tasks"].values()) / 8
    assert pooled == pytest.approx(entry["test_accuracy"])
