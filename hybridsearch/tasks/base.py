"""What a task family is: everything that differs between searching Vision Mamba on image classification and a
Mamba LM on commonsense reasoning.

A family owns the data kinds, split names and task names it reads and how it checks them, how a model is built
for one task, how a trial trains and scores it, and how the winner is retrained and tested once. The search, its
preflight, the calibration and the export ask the family of a space's ``data.kind``; none of them tests a kind.
Adding a family (a new data format) is one module with a ``TaskFamily`` subclass and one ``FAMILIES.register``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from torch import nn

from ..errors import ConfigError
from ..registry import Registry

S = TypeVar("S")
OnEpoch = Callable[[int, float], None]


@dataclass
class TaskData(Generic[S]):
    """One task of a search in its family's own form (``(images, labels)`` tensors for Vim, record lists for
    the LM). ``val`` is the validation split while searching and the test split when retraining the winner;
    ``num_classes`` sizes a classifier head (0: the family trains none)."""

    name: str
    num_classes: int
    train: S
    val: S

    @property
    def train_examples(self) -> int:
        return len(self.train[0] if isinstance(self.train, tuple) else self.train)


class TaskFamily(ABC):
    """One kind of task a space can search. ``space`` arguments are ``search.space.SearchSpace`` objects
    (model, data, fidelity sections); a family reads them, never changes them."""

    name: ClassVar[str]
    data_kinds: ClassVar[tuple[str, ...]]  # values of a space's ``data.kind``
    model_kind: ClassVar[str]  # the kind of registered model it trains (``models.ModelSpec.kind``)
    splits: ClassVar[tuple[str, ...]]  # what ``data.train_split`` / ``data.val_split`` may name
    default_splits: ClassVar[tuple[str, str]]  # (train, val) when a space names none
    has_head: ClassVar[bool]  # trains a classifier head: class counts matter, head-only is a baseline
    calibrates: ClassVar[bool] = True  # ``hybridsearch calibrate`` supports it

    def known_tasks(self, kind: str) -> tuple[str, ...] | None:
        """The task names ``kind`` offers (None: not known before the data is read)."""
        return None

    def task_classes(self, kind: str, task: str) -> int | None:
        """A task's class count when it is known without reading data."""
        return None

    @abstractmethod
    def data_root(self, space: Any, override: str | Path | None) -> Path:
        """Where the space's data lives (``override`` first); built or defaulted where the family can."""

    @abstractmethod
    def check_data(self, space: Any, override: str | Path | None) -> None:
        """Before a study is created: raise ``DataError`` naming the file and line of the first bad input."""

    @abstractmethod
    def load_tasks(self, space: Any, root: Path, *, tasks: list[str] | None = None, max_train: int | None = None,
                   max_val: int | None = None, final: bool = False) -> list[TaskData]:
        """The search tasks (``tasks`` overrides ``space.search_tasks``) at the space's splits; ``final``: all
        the training data and the test split, to retrain the winner and test it once."""

    @abstractmethod
    def build_model(self, space: Any, task: TaskData, peft: dict[str, Any], device: str = "cpu") -> nn.Module:
        """The space's pretrained model for ``task`` with the hybrid PEFT config ``peft`` applied."""

    @abstractmethod
    def train(self, space: Any, model: nn.Module, task: TaskData, recipe: Any, seed: int,
              on_epoch: OnEpoch | None = None) -> float:
        """Train on ``task.train`` with the search's ``training.recipe.Recipe``; return the accuracy on
        ``task.val``. With ``on_epoch`` (a search trial), ``task.val`` is scored after every epoch and reported
        to it (it may raise ``optuna.TrialPruned``); without it, only once at the end (the winner's test)."""


FAMILIES: Registry[TaskFamily] = Registry("task family")


def family_of(data_kind: str) -> TaskFamily:
    """The family that reads ``data_kind`` (a space's ``data.kind``)."""
    for _, fam in FAMILIES.items():
        if data_kind in fam.data_kinds:
            return fam
    raise ConfigError(f"unknown data kind {data_kind!r}; allowed: {', '.join(data_kinds())}")


def data_kinds() -> tuple[str, ...]:
    return tuple(k for _, fam in FAMILIES.items() for k in fam.data_kinds)
