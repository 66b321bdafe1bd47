"""``hybridsearch data``: check exit codes and JSON, path, build-mini-vtab."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from hybridsearch.cli import main


def _tree(root: Path) -> Path:
    task = root / "mytask"
    for split, labels in {"train800": [0, 1], "val200": [1], "train800val200": [0, 1, 1], "test": [1, 0]}.items():
        (task / "images" / split).mkdir(parents=True)
        lines = []
        for i, lab in enumerate(labels):
            Image.new("RGB", (4, 4), (lab * 200, 0, 0)).save(task / "images" / split / f"{i:06d}.png")
            lines.append(f"images/{split}/{i:06d}.png {lab}\n")
        (task / f"{split}.txt").write_text("".join(lines))
    return root


def test_check_clean_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    root = _tree(tmp_path / "vtab")
    assert main(["data", "check", "--vtab-root", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["tasks"][0]["splits"]["train800val200"]["images"] == 3
    assert main(["data", "check", "--vtab-root", str(root), "--no-decode"]) == 0
    assert "no problems" in capsys.readouterr().out


def test_check_problems_exit_1_missing_root_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    root = _tree(tmp_path / "vtab")
    (root / "mytask" / "test.txt").write_text("images/test/000000.png 1\nimages/x.jpg cat\n")
    assert main(["data", "check", "--vtab-root", str(root), "--tasks", "mytask"]) == 1
    out = capsys.readouterr().out
    assert "bad_line" in out and "test.txt:2" in out
    assert main(["data", "check", "--vtab-root", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_path_and_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path / "cache"))
    assert main(["data", "path", "--seed", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache" / "mini_vtab-v1-seed2")
    assert main(["data"]) == 2
    if importlib.util.find_spec("skimage") is None:
        pytest.skip("scikit-image not installed")
    out = tmp_path / "built"
    assert main(["data", "build-mini-vtab", "--out", str(out), "--seed", "1", "--tasks", "faces"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out) and "faces" in captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 1 and manifest["tasks"]["faces"]["splits"]["test"]["count"] == 120
    assert main(["data", "build-mini-vtab", "--out", str(out)]) == 2  # refuses to overwrite
