"""A tiny search on the LM path end to end: ``hybridsearch run`` on a commonsense space with mamba-proxy ->
``export --retrain`` (adapters + merged checkpoint, test files scored once) -> the adapters reload and score the
same test accuracy through ``hybridsearch evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hybridsearch.cli import main
from hybridsearch.data.commonsense import BUNDLED_ROOT, TRAIN_FILE

SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "mamba_commonsense.yaml"


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


def test_tiny_lm_search_export_and_reload(tmp_path: Path, tiny_root: Path, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    space = yaml.safe_load(SPACE.read_text())
    space["data"].update(root=str(tiny_root), tasks=["boolq", "piqa"])
    space.pop("final", None)  # two search trials, no re-trainings (final has its own tests)
    space["fidelity"].update(max_train_examples=8, max_val_examples=4)
    space["recipe"]["batch_size"] = 4
    space["methods"] = {"lora_X": {"optional": False, "params": {"rank": {"int": [2, 4], "step": 2}, "scale": 0.5}},
                        "additional_scan": {"optional": True, "params": {"states": 1, "position": "prefix"}}}
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
    assert main(["evaluate", "--model", "mamba-proxy", "--adapters", entry["adapters"], "--data-root",
                 str(tiny_root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the mixed test set is 4 boolq + 4 piqa records: the retrain score is their pooled accuracy
    pooled = sum(t["correct"] for t in out["tasks"].values()) / 8
    assert pooled == pytest.approx(entry["test_accuracy"])
