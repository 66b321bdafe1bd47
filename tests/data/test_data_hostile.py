"""Hostile data files: class lists, manifests and label lines of a VTAB-1k tree, mini-VTAB's seed, lock file and
manifest, and commonsense JSON. Every one is a ``DataError`` naming the file (and line or key) and what is allowed,
or a problem in ``check_vtab``'s report; never a traceback, and never a file read from outside the data root."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from hybridsearch.cli import main
from hybridsearch.data import commonsense, vtab
from hybridsearch.data import mini_vtab as mv
from hybridsearch.errors import DataError

SMALL = {"n_train": 16, "n_val": 8, "n_test": 8}


@pytest.fixture(autouse=True)
def _fresh_cache():
    vtab.clear_split_cache()
    yield
    vtab.clear_split_cache()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """One task that is not in the VTAB table (its class count comes from manifest / classes.txt / labels)."""
    root = tmp_path / "vtab-1k"
    task = root / "mytask"
    for split, labels in (("train800", [0, 1, 1]), ("val200", [1]), ("train800val200", [0, 1, 1, 1]),
                          ("test", [0, 1])):
        (task / "images" / split).mkdir(parents=True)
        lines = []
        for i, lab in enumerate(labels):
            Image.new("RGB", (4, 4), (lab * 200, 0, 0)).save(task / "images" / split / f"{i:06d}.png")
            lines.append(f"images/{split}/{i:06d}.png {lab}\n")
        (task / f"{split}.txt").write_text("".join(lines))
    return root


def data_error(fn) -> str:
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def reported(root: Path) -> list[str]:
    """check_vtab collects problems instead of raising; their text."""
    return [str(p) for p in vtab.check_vtab(root).problems]


# -- classes.txt and manifest.json ------------------------------------------------------------------------------------
def test_binary_classes_txt(tree):
    ct = tree / "mytask" / "classes.txt"
    ct.write_bytes(b"\xff\xfe\x00\x80" * 10)
    msg = data_error(lambda: vtab.split_entries(tree, "mytask", "train800"))
    assert msg.startswith(str(ct)) and "not UTF-8 text" in msg
    assert any(p.startswith(str(ct)) and "not UTF-8" in p for p in reported(tree))


@pytest.mark.parametrize(("manifest", "expected"), [
    ([1], "must be a JSON object with 'tasks'"),
    ({"tasks": [1]}, "tasks: must be a mapping of task name -> {num_classes, group}"),
    ({"tasks": {"mytask": "ten"}}, "tasks.mytask: must be a mapping"),
    ({"tasks": {"mytask": {"num_classes": "ten"}}},
     "tasks.mytask.num_classes: must be an integer between 1 and 1,000,000, got 'ten'"),
    ({"tasks": {"mytask": {"num_classes": -4}}}, "tasks.mytask.num_classes: must be an integer between 1 and"),
    ({"tasks": {"mytask": {"num_classes": 10**40}}}, "tasks.mytask.num_classes: must be an integer between 1 and"),
    ({"tasks": {"mytask": {"num_classes": 2.5}}}, "tasks.mytask.num_classes: must be an integer between 1 and"),
    ({"tasks": {"mytask": {"num_classes": math.nan}}}, "tasks.mytask.num_classes: must be an integer between"),
    ({"tasks": {"mytask": {"num_classes": 2, "group": 7}}}, "tasks.mytask.group: must be a string"),
], ids=["list", "tasks-list", "entry-string", "classes-word", "classes-negative", "classes-huge", "classes-float",
        "classes-nan", "group-int"])
def test_bad_manifest_values(tree, manifest, expected):
    mf = tree / "manifest.json"
    mf.write_text(json.dumps(manifest))
    msg = data_error(lambda: vtab.task_info(tree, "mytask"))
    assert msg.startswith(str(mf)) and expected in msg, msg
    assert any(expected in p for p in reported(tree))


@pytest.mark.parametrize(("data", "expected"), [
    (b"\xff\xfe{}", "not UTF-8 text"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
], ids=["binary", "deep"])
def test_unreadable_manifest(tree, data, expected):
    (tree / "manifest.json").write_bytes(data)
    assert expected in data_error(lambda: vtab.task_info(tree, "mytask"))
    assert any(expected in p for p in reported(tree))


def test_data_check_reports_a_bad_manifest_without_a_traceback(tree, capsys):
    (tree / "manifest.json").write_text(json.dumps({"tasks": {"mytask": {"num_classes": "ten"}}}))
    capsys.readouterr()
    assert main(["data", "check", "--vtab-root", str(tree), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    kinds = [p["kind"] for t in report["tasks"] for p in t["problems"]]
    assert "bad_classes" in kinds


# -- label lines ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path_of", [lambda secret: "../../secret.png", lambda secret: str(secret),
                                     lambda secret: "images/../../../secret.png"],
                         ids=["dot-dot", "absolute", "inner-dot-dot"])
def test_label_lines_cannot_leave_the_task_folder(tree, path_of):
    secret = tree.parent / "secret.png"
    Image.new("RGB", (4, 4)).save(secret)
    lf = tree / "mytask" / "train800.txt"
    lf.write_text(f"images/train800/000000.png 0\n{path_of(secret)} 1\n")
    msg = data_error(lambda: vtab.split_entries(tree, "mytask", "train800"))
    assert msg.startswith(f"{lf}:2: ") and "leaves the task folder" in msg and "images/<split>/" in msg
    problems = vtab.check_vtab(tree).problems
    assert [(p.line, p.kind) for p in problems if p.file == str(lf)] == [(2, "bad_line")]


def test_absurd_labels_are_refused(tree):
    lf = tree / "mytask" / "train800.txt"
    lf.write_text("images/train800/000000.png 1000000000000\n")
    msg = data_error(lambda: vtab.split_entries(tree, "mytask", "train800"))
    assert msg.startswith(f"{lf}:1: ") and "label must be an integer between 0 and 999,999" in msg
    lf.write_text("images/train800/000000.png " + "7" * 5000 + "\n")
    assert "label must be an integer between 0 and 999,999" in data_error(
        lambda: vtab.split_entries(tree, "mytask", "train800"))


def test_an_oversized_list_file_is_refused(tree, monkeypatch):
    monkeypatch.setattr(vtab, "_MAX_LIST_BYTES", 100)  # the real limit is 64 MiB; the rule is the same
    lf = tree / "mytask" / "train800.txt"
    lf.write_text("images/train800/000000.png 0\n" * 10)
    assert "larger than 100 bytes, the limit for a list file" in data_error(
        lambda: vtab.split_entries(tree, "mytask", "train800"))
    assert any(p.startswith(str(lf)) and "larger than 100 bytes" in p for p in reported(tree))


# -- mini-VTAB: seed, lock file, manifest ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [-1, 2**32, 2**200, True, 1.5])
def test_seed_out_of_range(tmp_path, monkeypatch, seed):
    monkeypatch.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path / "cache"))
    allowed = "seed must be an integer between 0 and 4,294,967,295"
    assert allowed in data_error(lambda: mv.build_mini_vtab(tmp_path / "out", seed, tasks=["faces"], **SMALL))
    assert allowed in data_error(lambda: mv.ensure_mini_vtab(seed, tasks=["faces"], **SMALL))
    assert allowed in data_error(lambda: mv.mini_vtab_path(seed))
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("argv", [["data", "build-mini-vtab", "--tasks", "faces", "--seed", "-1"],
                                  ["data", "path", "--seed", "-5"], ["data", "check", "--seed", "-5"]])
def test_seed_out_of_range_from_the_cli(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seed must be an integer between 0 and 4,294,967,295" in err
    assert list(tmp_path.iterdir()) == []


def test_lock_file_that_is_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path))
    dest = mv.mini_vtab_path(0, tasks=["faces"], **SMALL)
    lock = dest.parent / f".{dest.name}.lock"
    lock.mkdir(parents=True)
    msg = data_error(lambda: mv.ensure_mini_vtab(0, tasks=["faces"], **SMALL))
    assert str(lock) in msg and "is a folder" in msg and "remove it" in msg
    assert not dest.exists()


def test_data_dir_that_is_a_file(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path / "file"))
    assert str(tmp_path / "file") in data_error(lambda: mv.ensure_mini_vtab(0, tasks=["faces"], **SMALL))
    assert "cannot create" in data_error(lambda: mv.build_mini_vtab(tmp_path / "file" / "out", tasks=["faces"],
                                                                   **SMALL))


@pytest.fixture
def faces(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path / "cache"))
    return mv.ensure_mini_vtab(0, tasks=["faces"], **SMALL)


@pytest.mark.parametrize("manifest", [[], {"tasks": [1]}, {"tasks": {"faces": "x"}},
                                      {"tasks": {"faces": {"splits": {"train800": {}}}}},
                                      {"tasks": {"faces": {"splits": [1]}}}],
                         ids=["list", "tasks-list", "entry-string", "no-sha", "splits-list"])
def test_a_bad_cached_manifest_is_a_problem_and_gets_rebuilt(faces, manifest):
    mf = faces / "manifest.json"
    mf.write_text(json.dumps(manifest))
    problems = mv.verify_mini_vtab(faces)
    assert problems and all(p.startswith(str(faces)) for p in problems)
    assert mv.ensure_mini_vtab(0, tasks=["faces"], **SMALL) == faces  # rebuilt
    assert mv.verify_mini_vtab(faces) == []


def test_a_manifest_listing_paths_outside_the_build_is_a_problem(faces):
    import hashlib

    manifest = json.loads((faces / "manifest.json").read_text())
    lf = faces / "faces" / "test.txt"
    lf.write_text("\n../../../etc/passwd 0\n")
    manifest["tasks"]["faces"]["splits"]["test"]["list_sha256"] = hashlib.sha256(lf.read_bytes()).hexdigest()
    manifest["checksum"] = mv.manifest.checksum(manifest)
    (faces / "manifest.json").write_text(json.dumps(manifest))
    problems = mv.verify_mini_vtab(faces, deep=True)
    assert any(p.startswith(f"{lf}:2: ") and "leaves the task folder" in p for p in problems), problems


# -- commonsense JSON --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "expected"), [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"[" + b"1" * 5000 + b"]", "an integer longer than 4,300 digits"),
], ids=["deep", "5000-digits"])
def test_commonsense_json_that_json_cannot_take(tmp_path, data, expected):
    f = tmp_path / "test.json"
    f.write_bytes(data)
    msg = data_error(lambda: commonsense.load_records(f))
    assert msg.startswith(str(f)) and expected in msg
