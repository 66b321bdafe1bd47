"""VTAB-1k loader on tiny trees in the real NOAH layout (PNG and JPEG, four list files, one empty)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hybridsearch.data import vtab
from hybridsearch.errors import DataError

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def _write(task_dir: Path, split: str, labels: list[int], ext: str = "png", size: tuple[int, int] = (8, 6)) -> str:
    """Solid-colour images (colour = label) and the list file; returns the list text."""
    (task_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    lines = []
    for i, lab in enumerate(labels):
        rel = f"images/{split}/{i:06d}.{ext}"
        Image.new("RGB", size, COLORS[lab % len(COLORS)]).save(task_dir / rel, quality=95)
        lines.append(f"{rel} {lab}\n")
    text = "".join(lines)
    (task_dir / f"{split}.txt").write_text(text)
    return text


@pytest.fixture(autouse=True)
def _fresh_cache():
    vtab.clear_split_cache()
    yield
    vtab.clear_split_cache()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "vtab-1k"
    cifar = root / "cifar"  # a real task name: 100 classes from the table
    _write(cifar, "train800", [0, 1, 2, 3])
    _write(cifar, "val200", [3, 2])
    _write(cifar, "train800val200", [0, 1, 2, 3, 3, 2])
    _write(cifar, "test", [1, 0, 2], ext="jpg", size=(10, 12))
    mine = root / "mytask"  # unknown name: classes inferred as max label + 1
    _write(mine, "train800", [0, 1, 1])
    _write(mine, "val200", [])  # an empty list file is legal
    _write(mine, "train800val200", [0, 1, 1])
    _write(mine, "test", [1, 2])
    return root


def test_registry_has_19_tasks_in_3_groups():
    assert len(vtab.VTAB_TASKS) == 19
    groups = [t.group for t in vtab.VTAB_TASKS.values()]
    assert (groups.count("natural"), groups.count("specialized"), groups.count("structured")) == (7, 4, 8)
    assert vtab.VTAB_TASKS["sun397"].num_classes == 397 and vtab.VTAB_TASKS["clevr_count"].num_classes == 8
    assert set(vtab.SEARCH_TASKS) <= set(vtab.VTAB_TASKS)


def test_class_counts_table_and_inferred(tree: Path):
    assert vtab.task_info(tree, "cifar") == (vtab.VtabTask("cifar", 100, "natural"), "table")
    assert vtab.task_info(tree, "mytask")[0].num_classes == 3
    assert vtab.task_info(tree, "mytask")[1] == "inferred"
    (tree / "mytask" / "classes.txt").write_text("a\nb\nc\nd\n\n")
    assert vtab.task_info(tree, "mytask")[1:] == ("classes.txt",)
    assert vtab.num_classes(tree, "mytask") == 4
    (tree / "manifest.json").write_text(json.dumps({"tasks": {"mytask": {"num_classes": 5, "group": "natural"}}}))
    assert vtab.task_info(tree, "mytask") == (vtab.VtabTask("mytask", 5, "natural"), "manifest")
    assert vtab.list_tasks(tree) == ["cifar", "mytask"]


def test_load_split_labels_map_to_the_right_images(tree: Path):
    images, labels = vtab.load_split(tree, "cifar", "train800val200", image_size=None)
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 6, 8)
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2, 3, 3, 2]
    for img, lab in zip(images, labels):
        assert img[:, 0, 0].tolist() == list(COLORS[lab])
    # Cached: the second call is the same tensor, a changed list file is re-read.
    assert vtab.load_split(tree, "cifar", "train800val200", image_size=None)[0] is images
    _write(tree / "cifar", "train800val200", [1])
    assert vtab.load_split(tree, "cifar", "train800val200", image_size=None)[1].tolist() == [1]


def test_resize_is_bicubic_and_normalize_uses_imagenet_stats(tree: Path):
    images, _ = vtab.load_split(tree, "cifar", "test", image_size=16)
    assert images.shape == (3, 3, 16, 16)
    with Image.open(tree / "cifar" / "images/test/000000.jpg") as im:
        ref = np.array(im.convert("RGB").resize((16, 16), Image.Resampling.BICUBIC))
    assert torch.equal(images[0], torch.from_numpy(ref).permute(2, 0, 1))
    x = vtab.normalize(images)
    mean = torch.tensor(vtab.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(vtab.IMAGENET_STD).view(3, 1, 1)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, (images.float() / 255 - mean) / std)
    with pytest.raises(TypeError):
        vtab.normalize(x)


def test_dataset_matches_fast_path(tree: Path):
    ds = vtab.VtabDataset(tree, "cifar", "train800", image_size=12)
    assert len(ds) == 4 and ds.num_classes == 100 and ds.group == "natural"
    images, labels = vtab.load_split(tree, "cifar", "train800", image_size=12)
    for i in range(len(ds)):
        x, y = ds[i]
        assert y == labels[i].item()
        torch.testing.assert_close(x, vtab.normalize(images[i]))
    empty_images, empty_labels = vtab.load_split(tree, "mytask", "val200", image_size=12)
    assert empty_images.shape == (0, 3, 12, 12) and empty_labels.shape == (0,)


def test_native_size_requires_equal_sizes(tree: Path):
    _write(tree / "mytask", "test", [0], size=(5, 5))
    (tree / "mytask" / "test.txt").write_text("images/test/000000.png 0\nimages/train800/000000.png 1\n")
    with pytest.raises(DataError, match=r"test\.txt:2: .* expected 5x5"):
        vtab.load_split(tree, "mytask", "test", image_size=None)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("images/train800/000000.png 0\nimages/x.jpg cat\n", r"train800\.txt:2: label 'cat' is not an integer"),
        ("images/train800/000000.png 0 extra\n", r"train800\.txt:1: expected .*\(2 fields\), got 3"),
        ("\nimages/train800/000000.png 100\n", r"train800\.txt:2: label 100 out of range \[0, 100\)"),
        ("images/train800/000000.png -1\n", r"train800\.txt:1: label -1 out of range"),
        ("images/train800/999999.png 0\n", r"train800\.txt:1: image .*999999\.png not found"),
    ],
)
def test_bad_lines_raise_with_file_and_line(tree: Path, content: str, pattern: str):
    (tree / "cifar" / "train800.txt").write_text(content)
    with pytest.raises(DataError, match=pattern):
        vtab.VtabDataset(tree, "cifar", "train800")


def test_missing_root_list_and_unreadable_image(tree: Path):
    with pytest.raises(DataError, match="does not exist"):
        vtab.load_split(tree / "nope", "cifar", "train800")
    with pytest.raises(DataError, match="task folder"):
        vtab.load_split(tree, "dtd", "train800")
    (tree / "cifar" / "val200.txt").unlink()
    with pytest.raises(DataError, match=r"val200\.txt not found"):
        vtab.load_split(tree, "cifar", "val200")
    (tree / "cifar" / "images/test/000001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"test\.txt:2: cannot read image .*000001\.jpg"):
        vtab.load_split(tree, "cifar", "test", image_size=8)


def test_check_reports_every_problem_without_raising(tree: Path):
    report = vtab.check_vtab(tree)
    assert report.ok, report.problems
    cifar = report.tasks[0]
    assert cifar.classes_seen == 4 and cifar.splits["test"].images == 3
    assert any("empty" in w for w in report.tasks[1].warnings)

    (tree / "cifar" / "train800.txt").write_text(
        "images/train800/000000.png 0\nimages/x.jpg cat\nimages/train800/000001.png 1 2\n"
        "images/train800/000002.png 100\nimages/train800/777.png 1\n"
    )
    (tree / "cifar" / "images/test/000002.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tree / "mytask" / "test.txt").unlink()
    report = vtab.check_vtab(tree, ["cifar", "mytask", "ghost"])
    found = {(Path(p.file).name, p.line, p.kind) for p in report.problems}
    assert found == {
        ("train800.txt", 2, "bad_line"),
        ("train800.txt", 3, "bad_line"),
        ("train800.txt", 4, "label_out_of_range"),
        ("train800.txt", 5, "missing_image"),
        ("test.txt", 3, "unreadable_image"),
        ("test.txt", None, "missing_list"),
        ("ghost", None, "missing_task"),
    }
    assert report.tasks[0].splits["train800"].images == 1
    d = report.to_dict()
    assert d["ok"] is False and d["num_problems"] == 7
    json.dumps(d)  # serialisable for --json
    with pytest.raises(DataError):
        vtab.check_vtab(tree / "nope")
