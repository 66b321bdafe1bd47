"""Bad input through the CLI: one line on stderr naming the file, key or line and what is allowed, exit status 2,
no traceback unless ``--debug``, and nothing written to the study storage."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import tiny_model

from hybridsearch.cli import main
from hybridsearch.models import MODELS
from hybridsearch.models.checkpoint import save_vim
from hybridsearch.search.space import load_space
from hybridsearch.search.storage import open_storage
from hybridsearch.search.study import RunOptions, open_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


class NeedsCode:
    """A pickle holding this needs code to load: ``weights_only`` loading must refuse it."""


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-task mini-VTAB slice of test_engine.py (same folder: built once per session)."""
    from hybridsearch.data.mini_vtab import ensure_mini_vtab

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "hybridsearch-data"))
        return ensure_mini_vtab(tasks=["mnist5k"], n_test=200)


@pytest.fixture
def small_root(tmp_path: Path, mini_root: Path) -> Path:
    """A writable 12-image copy of mnist5k (8 train, 4 val) to break."""
    src, dst = mini_root / "mnist5k", tmp_path / "data" / "mnist5k"
    dst.mkdir(parents=True)
    shutil.copy(src / "classes.txt", dst)
    for split, n in (("train800", 8), ("val200", 4)):
        lines = (src / f"{split}.txt").read_text().splitlines()[:n]
        (dst / f"{split}.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            rel = line.split()[0]
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / rel, dst / rel)
    return dst.parent


def space_dict(root: Path, **over) -> dict:
    d = {
        "model": {"name": "vim-proxy"},
        "data": {"kind": "mini_vtab", "tasks": ["mnist5k"], "root": str(root)},
        "objectives": ["accuracy"], "trials": 1,
        "fidelity": {"epochs": 1, "max_train_examples": 8, "max_val_examples": 4},
        "sampler": {"kind": "random", "seed": 0},
        "recipe": {"lr": 1.0e-3, "batch_size": 8, "warmup_epochs": 0},
        "methods": {"lora_X": {"params": {"rank": {"int": [2, 4], "step": 2}, "scale": 0.1}},
                    "tune_D": {"optional": False}},
    }
    d.update(over)
    return d


def write_space(tmp_path: Path, root: Path, **over) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space_dict(root, **over), sort_keys=False))
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"hybridsearch {argv[0]}: error: ") and "Traceback" not in cap.out + cap.err
    return err


def studies(storage: Path) -> list[str]:
    if not storage.exists():
        return []
    return [s.study_name for s in optuna.get_all_study_summaries(open_storage(str(storage)))]


def run_error(capsys, tmp_path: Path, space: Path, *extra: str) -> str:
    """``run`` fails with one line and leaves no study behind."""
    storage = tmp_path / "j.journal"
    err = one_line_error(capsys, ["run", "--space", str(space), "--study", "bad", "--storage", str(storage),
                                  "--out", str(tmp_path / "out"), *extra])
    assert studies(storage) == []
    return err


# -- the search space -----------------------------------------------------------------------------------------------
def test_malformed_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: vim-proxy\ndata: [\n")
    err = run_error(capsys, tmp_path, bad)
    assert "bad.yaml" in err and "malformed YAML" in err and "line" in err


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda d: d["methods"].update(lora_Q=d["methods"].pop("lora_X")),
     ["methods.lora_Q", "unknown method", "allowed:", "lora_X"]),
    (lambda d: d["methods"]["lora_X"]["params"].update(scal=0.1),
     ["methods.lora_X.params.scal", "unknown key", "allowed:", "scale"]),
    (lambda d: d["methods"]["lora_X"]["params"].update(rank={"int": [4, 2]}),
     ["methods.lora_X.params.rank", "min > max"]),
    (lambda d: d["methods"]["lora_X"]["params"].update(rank=-2),
     ["methods.lora_X.params.rank", "positive integer", "-2"]),
    (lambda d: d["methods"]["lora_X"]["params"].update(rank=2.5),
     ["methods.lora_X.params.rank", "positive integer", "2.5"]),
    (lambda d: d.update(budget={"max_trainable": 10}),
     ["budget.max_trainable", "smallest configuration", "no configuration can meet it"]),
], ids=["unknown-method", "unknown-field", "min-gt-max", "negative-rank", "float-rank", "impossible-budget"])
def test_bad_space(tmp_path, capsys, small_root, edit, expected):
    d = space_dict(small_root)
    edit(d)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    err = run_error(capsys, tmp_path, path)
    assert "space.yaml" in err
    for part in expected:
        assert part in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_devices_without_cuda(tmp_path, capsys, small_root):
    err = run_error(capsys, tmp_path, write_space(tmp_path, small_root), "--devices", "0,1")
    assert "--devices 0,1: CUDA is not available" in err and "--workers" in err


def test_bad_worker_counts(tmp_path, capsys, small_root, monkeypatch):
    from hybridsearch.commands.run import default_workers

    assert "--workers 0: must be at least 1" in run_error(capsys, tmp_path, write_space(tmp_path, small_root),
                                                          "--workers", "0")
    monkeypatch.setenv("HYBRIDSEARCH_WORKERS", "two")
    assert "HYBRIDSEARCH_WORKERS='two': must be a positive integer" in run_error(
        capsys, tmp_path, write_space(tmp_path, small_root))
    monkeypatch.setenv("HYBRIDSEARCH_WORKERS", "3")
    assert default_workers(None) == 3 and default_workers(2) == 2
    monkeypatch.delenv("HYBRIDSEARCH_WORKERS")
    assert default_workers(None) == max(1, min(8, len(os.sched_getaffinity(0))))


# -- data ------------------------------------------------------------------------------------------------------
def test_missing_data_root(tmp_path, capsys, small_root):
    err = run_error(capsys, tmp_path, write_space(tmp_path, tmp_path / "nowhere"))
    assert "data.root" in err and "nowhere" in err and "--data-root" in err


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_image(tmp_path, capsys, small_root, how):
    line = (small_root / "mnist5k" / "train800.txt").read_text().splitlines()[2]
    image = small_root / "mnist5k" / line.split()[0]
    data = image.read_bytes()
    image.write_bytes(b"not a png at all" if how == "garbage" else data[: len(data) // 2])
    err = run_error(capsys, tmp_path, write_space(tmp_path, small_root))
    assert "train800.txt:3:" in err and "cannot read image" in err and image.name in err


@pytest.mark.parametrize(("text", "expected"), [
    ("images/train800/000001.png seven", "label 'seven' is not an integer"),
    ("images/train800/000001.png", "expected '<image path> <int label>'"),
    ("images/train800/000001.png 12", "label 12 out of range [0, 10)"),
])
def test_bad_label_line(tmp_path, capsys, small_root, text, expected):
    lf = small_root / "mnist5k" / "train800.txt"
    lines = lf.read_text().splitlines()
    lines[1] = text
    lf.write_text("\n".join(lines) + "\n")
    err = run_error(capsys, tmp_path, write_space(tmp_path, small_root))
    assert "train800.txt:2:" in err and expected in err


def test_label_line_outside_the_data_root(tmp_path, capsys, small_root):
    lf = small_root / "mnist5k" / "train800.txt"
    lines = lf.read_text().splitlines()
    rel = lines[1].split()[0]
    outside = small_root.parent / rel  # a real image two folders above the task folder: never to be read
    outside.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(small_root / "mnist5k" / rel, outside)
    lines[1] = f"../../{lines[1]}"
    lf.write_text("\n".join(lines) + "\n")
    err = run_error(capsys, tmp_path, write_space(tmp_path, small_root))
    assert "train800.txt:2:" in err and "leaves the task folder" in err


# -- hostile space files: refused before any study exists ------------------------------------------------------
@pytest.mark.parametrize(("edit", "expected"), [
    (lambda t: t + "trials: 2\n", "duplicate key 'trials'"),
    (lambda t: t.replace("scale: 0.1", "scale: .nan"), "methods.lora_X.params.scale: must be a finite number > 0"),
    (lambda t: t + "description: " + "[" * 1000 + "]" * 1000 + "\n", "nested deeper than 64 levels"),
    (lambda t: "x: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh")) + t,
     "aliases expand this document beyond 100,000 values"),
    (lambda t: t + "description: " + "x" * 300_000 + "\n", "larger than 262,144 bytes"),
], ids=["duplicate-key", "nan", "deep", "alias-bomb", "too-large"])
def test_hostile_space_file(tmp_path, capsys, small_root, edit, expected):
    path = write_space(tmp_path, small_root)
    path.write_text(edit(path.read_text()))
    err = run_error(capsys, tmp_path, path)
    assert str(path) in err and expected in err


def test_bad_data_adds_no_trial_to_an_existing_study(tmp_path, capsys, small_root):
    space, storage = write_space(tmp_path, small_root), tmp_path / "j.journal"
    open_study(RunOptions(study="old", storage=str(storage), space_ref=str(space)), load_space(space), create=True)
    (small_root / "mnist5k" / "val200.txt").write_text("images/val200/000000.png x\n")
    one_line_error(capsys, ["run", "--space", str(space), "--study", "old", "--storage", str(storage),
                            "--out", str(tmp_path / "out")])
    assert optuna.load_study(study_name="old", storage=open_storage(str(storage))).trials == []


# -- checkpoints -----------------------------------------------------------------------------------------------
def _bad_checkpoint(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pth"
    if kind == "wrong-shapes":  # a real hustvl checkpoint of another Vim
        save_vim(tiny_model("vim"), path)
    elif kind == "truncated":
        data = MODELS.get("vim-proxy").checkpoint().read_bytes()
        path.write_bytes(data[: len(data) // 3])
    else:
        torch.save({"model": NeedsCode()}, path)
    return path


CHECKPOINT_ERRORS = {"wrong-shapes": "shape mismatches", "truncated": "cannot read checkpoint",
                     "needs-code": "refused to load"}


@pytest.mark.parametrize("kind", list(CHECKPOINT_ERRORS))
def test_bad_checkpoint_in_a_space(tmp_path, capsys, small_root, kind):
    ckpt = _bad_checkpoint(tmp_path, kind)
    err = run_error(capsys, tmp_path, write_space(tmp_path, small_root,
                                                  model={"name": "vim-proxy", "checkpoint": str(ckpt)}))
    assert str(ckpt) in err and CHECKPOINT_ERRORS[kind] in err


@pytest.mark.parametrize("kind", list(CHECKPOINT_ERRORS))
def test_bad_base_checkpoint_for_apply(tmp_path, capsys, kind):
    from hybridsearch.peft import apply_peft, save_adapters

    model = tiny_model("vim")
    apply_peft(model, {"methods": {"lora_X": {"rank": 2}}})
    save_adapters(model, tmp_path / "ad")
    ckpt = _bad_checkpoint(tmp_path, kind)
    if kind == "wrong-shapes":  # adapters of vim-proxy, base of another Vim
        ad = tmp_path / "proxy-ad"
        proxy = MODELS.get("vim-proxy")
        from hybridsearch.models import create_model

        m = create_model(proxy.checkpoint(), num_classes=10)
        apply_peft(m, {"methods": {"lora_X": {"rank": 2}}})
        save_adapters(m, ad)
        err = one_line_error(capsys, ["apply", "--base", str(ckpt), "--adapters", str(ad), "--out",
                                      str(tmp_path / "o")])
        assert "does not match the adapters" in err
    else:
        err = one_line_error(capsys, ["apply", "--base", str(ckpt), "--adapters", str(tmp_path / "ad"), "--out",
                                      str(tmp_path / "o")])
        assert CHECKPOINT_ERRORS[kind] in err
    assert str(ckpt) in err and not (tmp_path / "o").exists()


# -- storage -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "show"])
def test_unreachable_storage(tmp_path, capsys, small_root, command):
    url = "postgresql://nobody@127.0.0.1:1/x"
    argv = (["run", "--space", str(write_space(tmp_path, small_root)), "--out", str(tmp_path / "out")]
            if command == "run" else ["show", "s"])
    err = one_line_error(capsys, [*argv, "--storage", url])
    assert "cannot open storage" in err and url in err


# -- tracebacks only with --debug ------------------------------------------------------------------------------
def test_no_traceback_without_debug(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [\n")
    cmd = [sys.executable, "-m", "hybridsearch.cli", "run", "--space", str(bad), "--storage",
           str(tmp_path / "j.journal")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert "bad.yaml" in proc.stderr and "malformed YAML" in proc.stderr
    capsys.readouterr()
    assert main(["--debug", "run", "--space", str(bad), "--storage", str(tmp_path / "j.journal")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("hybridsearch run: error:")
    assert studies(tmp_path / "j.journal") == []
