"""Hugging Face Hub ids resolved through the local cache only: hybridsearch never downloads weights.

``cached_snapshot("state-spaces/mamba-130m-hf")`` is the snapshot folder of that repository in the cache that
``huggingface_hub`` fills (``models--ORG--NAME/refs/main`` names the commit, ``snapshots/<commit>/`` holds the
files), found where ``huggingface_hub`` looks: ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME/hub``,
``XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``. The layout is read directly, so neither
``huggingface_hub`` nor a network is needed, and the environment is read at each call (huggingface_hub reads it
once, at import).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CheckpointError

# the Hub's repository names: ORG/NAME of letters, digits, '-', '_', '.'; no '--' or '..' (cache folder separators)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def is_hub_id(name: str) -> bool:
    """``ORG/NAME`` as the Hub spells repositories (a path that exists is a path, not an id)."""
    return bool(_HUB_ID.fullmatch(name)) and "--" not in name and ".." not in name and not name.endswith(".")


def hub_cache_dir() -> Path:
    """The folder huggingface_hub caches repositories in, from the environment as it is now."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _not_cached(repo_id: str, folder: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{repo_id!r}: not a registered model or an existing path, and {why} (looked in {folder}); hybridsearch "
        f"never downloads weights: run `hf download {repo_id}` where there is a network and copy its {folder.name} "
        f"folder into {folder.parent}, or point HF_HUB_CACHE / HF_HOME at a cache that has it, or pass the "
        "checkpoint folder itself"
    )


def cached_snapshot(repo_id: str) -> Path:
    """The cached snapshot folder of ``repo_id`` (the revision ``refs/main`` names, else the only snapshot);
    a one-line ``CheckpointError`` naming the id, the folder looked in and how to get it when it is not there."""
    folder = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        raise _not_cached(repo_id, folder, "it is not in the local Hugging Face cache" if not folder.exists()
                          else "its cache folder has no snapshots")
    ref = folder / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text(encoding="ascii", errors="replace").strip()
        if not _COMMIT.fullmatch(commit) or not (snapshots / commit).is_dir():
            raise _not_cached(repo_id, folder, f"its refs/main names {commit[:40]!r}, which has no snapshot")
        snapshot = snapshots / commit
    else:
        found = sorted(p.name for p in snapshots.iterdir() if p.is_dir())
        if len(found) != 1:
            raise _not_cached(repo_id, folder, "its cache folder has no snapshot" if not found else
                              f"its cache folder has {len(found)} snapshots and no refs/main to choose one")
        snapshot = snapshots / found[0]
    if not (snapshot / "config.json").is_file():
        raise _not_cached(repo_id, folder, f"its snapshot {snapshot.name} has no config.json (an incomplete download)")
    return snapshot


__all__ = ["cached_snapshot", "hub_cache_dir", "is_hub_id"]
