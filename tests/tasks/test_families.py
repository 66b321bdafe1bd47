"""Task families: every data kind has exactly one, and a new family is one class and one registration: the space
loader, the search and the winner's export then use it without a change (none of them tests a data kind)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from hybridsearch.deploy import export_winner
from hybridsearch.errors import ConfigError
from hybridsearch.search import RunOptions, run_options, space_from_dict
from hybridsearch.search.space import SpaceError
from hybridsearch.tasks import FAMILIES, TaskData, TaskFamily, data_kinds, family_of


def test_every_data_kind_has_one_family():
    kinds = data_kinds()
    assert kinds == ("vtab", "mini_vtab", "commonsense")  # the order messages list them in
    for kind in kinds:
        assert kind in family_of(kind).data_kinds
    assert family_of("mini_vtab").name == "vision" and family_of("commonsense").name == "language"


def test_an_unknown_kind_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown data kind 'csv'; allowed: vtab, mini_vtab, commonsense"):
        family_of("csv")


class Toy(TaskFamily):
    """Two tasks of random 32x32 images for vim-proxy; a trial's score is a fixed function of its seed."""

    name = "toy"
    data_kinds = ("toy",)
    model_kind = "vim"
    splits = ("fit", "check", "exam")
    default_splits = ("fit", "check")
    has_head = True

    def known_tasks(self, kind: str) -> tuple[str, ...]:
        return ("left", "right")

    def task_classes(self, kind: str, task: str) -> int:
        return 3

    def data_root(self, space: Any, override: str | Path | None) -> Path:
        return Path(override or space.data.root)

    def check_data(self, space: Any, override: str | Path | None) -> None:
        if not self.data_root(space, override).is_dir():
            raise ConfigError("toy data root missing")

    def load_tasks(self, space: Any, root: Path, *, tasks=None, max_train=None, max_val=None, final=False):
        g = torch.Generator().manual_seed(1 if final else 0)
        x = torch.randn(8, 3, 32, 32, generator=g)
        return [TaskData(t, 3, (x, torch.arange(8) % 3), (x, torch.arange(8) % 3)) for t in tasks or space.search_tasks]

    def build_model(self, space: Any, task: TaskData, peft: dict[str, Any], device: str = "cpu"):
        from hybridsearch import apply_peft, create_model

        return apply_peft(create_model(space.model.name, num_classes=task.num_classes), peft)

    def train(self, space: Any, model, task: TaskData, recipe: Any, seed: int, on_epoch=None) -> float:
        acc = (seed % 7) / 7
        if on_epoch is not None:
            on_epoch(0, acc)
        return acc


@pytest.fixture()
def toy(monkeypatch: pytest.MonkeyPatch) -> Toy:
    fam = Toy()
    monkeypatch.setitem(FAMILIES._items, fam.name, fam)
    return fam


def _space(tmp_path: Path, **data: Any) -> dict:
    return {"model": {"name": "vim-proxy"}, "data": {"kind": "toy", "tasks": ["left", "right"], "root": str(tmp_path),
                                                    **data},
            "fidelity": {"epochs": 1}, "sampler": {"kind": "random", "seed": 0}, "trials": 3,
            "methods": {"lora_X": {"params": {"rank": [2, 4]}}, "tune_D": {}}}


def test_the_space_loader_asks_the_family(tmp_path, toy):
    space = space_from_dict(_space(tmp_path))
    assert space.family is toy and (space.data.train_split, space.data.val_split) == ("fit", "check")
    assert space.num_classes() == 3  # the family's class count sizes the head for exact counting
    with pytest.raises(SpaceError) as e:
        space_from_dict(_space(tmp_path, tasks=["middle"], val_split="exam2"))
    assert "unknown toy task 'middle'; allowed: left, right" in str(e.value.errors)
    assert "'exam2' (string) is not allowed; allowed: fit, check, exam" in str(e.value.errors)


def test_a_search_and_the_export_run_on_a_new_family(tmp_path, toy):
    path = tmp_path / "toy.yaml"
    path.write_text(json.dumps(_space(tmp_path)))  # JSON is YAML
    study = run_options(RunOptions(study="toy", storage=str(tmp_path / "j.journal"), space_ref=str(path)), log=print)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3 and all(t.values[0] == (t.user_attrs["seed"] % 7) / 7 for t in done)
    meta = export_winner(study, tmp_path / "winner", retrain=True, log=lambda m: None)
    assert set(meta["retrain"]) == {"left", "right"}
    assert (tmp_path / "winner" / "adapters" / "left" / "adapter_model.safetensors").is_file()
