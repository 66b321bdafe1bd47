"""Checks a new search runs before its study is created, so a bad start writes nothing to the storage: the budget
can be met, the model checkpoint loads, and the search tasks' data reads (list lines, labels, every image).
Each failure is the typed error the CLI prints as one line (file, key or line, and what is allowed)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .space import SearchSpace, validate_space


def preflight(space: SearchSpace, data_root: str | None = None, devices: list[str] | None = None) -> None:
    check_devices(devices)
    check_budget_feasible(space)
    check_checkpoint(space)
    check_data(space, data_root)


def check_devices(devices: list[str] | None) -> None:
    """``--devices``: CUDA ids this machine has (a silent fall-back to CPU would hide a slow, wrong run)."""
    if not devices:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--devices {','.join(devices)}: CUDA is not available here (torch {torch.__version__}); "
                          "leave --devices out to run on CPU with --workers N")
    n = torch.cuda.device_count()
    bad = [d for d in devices if not d.isdigit() or int(d) >= n]
    if bad:
        raise ConfigError(f"--devices: {', '.join(bad)} not a GPU id here; allowed: 0 to {n - 1} "
                          "(repeat an id to pack two workers on one GPU)")


def check_budget_feasible(space: SearchSpace) -> None:
    """With a trainable-parameter budget, some configuration must meet it (exact counts, meta device)."""
    b = space.budget
    if b.max_trainable is None and b.min_trainable is None:
        return
    errors = [e for e in validate_space(space).errors if "budget." in e]
    if errors:
        raise ConfigError(errors[0])


def check_checkpoint(space: SearchSpace) -> None:
    """An explicit checkpoint (or a model given as a path) loads: keys, shapes, no code in the pickle."""
    from ..models import create_model

    m = space.model
    if m.checkpoint is None and not Path(m.name).exists():
        return
    create_model(m.name, num_classes=space.num_classes(), checkpoint=m.checkpoint)


def check_data(space: SearchSpace, override: str | None) -> None:
    """The task family reads the search splits (VTAB-1k: every list line, label and image)."""
    space.family.check_data(space, override)
