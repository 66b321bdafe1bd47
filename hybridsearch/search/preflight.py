"""Checks a new search runs before its study is created, so a bad start writes nothing to the storage: the budget
can be met, the model checkpoint loads, and the search tasks' data reads (list lines, labels, every image).
Each failure is the typed error the CLI prints as one line (file, key or line, and what is allowed)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import ConfigError


def preflight(space, data_root: str | None = None, devices: list[str] | None = None) -> None:
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


def check_budget_feasible(space) -> None:
    """With a trainable-parameter budget, some configuration must meet it (exact counts, meta device)."""
    from .space import validate_space

    b = space.budget
    if b.max_trainable is None and b.min_trainable is None:
        return
    errors = [e for e in validate_space(space).errors if "budget." in e]
    if errors:
        raise ConfigError(errors[0])


def check_checkpoint(space) -> None:
    """An explicit checkpoint (or a model given as a path) loads: keys, shapes, no code in the pickle."""
    from ..models import create_model

    m = space.model
    if m.checkpoint is None and not Path(m.name).exists():
        return
    create_model(m.name, num_classes=space.num_classes(), checkpoint=m.checkpoint)


def check_data(space, override: str | None) -> None:
    """Every line of the search splits parses, its label is in range and its image decodes."""
    from ..data.vtab import decode_image, split_entries
    from .objective import data_root

    data = space.data
    if data.kind == "commonsense" or (data.kind == "mini_vtab" and not (override or data.root)):
        return  # commonsense files are read by their own loader; mini-VTAB without a root is built here
    root = data_root(space, override)
    entries = [e for task in space.search_tasks for split in (data.train_split, data.val_split)
               for e in split_entries(root, task, split)]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        # nothing is kept; DataError names the list file, line and image of the first bad one
        for _ in pool.map(lambda e: decode_image(e, None) is None, entries):
            pass
