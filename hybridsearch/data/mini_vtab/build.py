"""Writing mini-VTAB: each task's splits as PNGs and list files in the NOAH VTAB-1k layout, then the manifest.

The layout is exactly NOAH's (``<task>/images/<split>/NNNNNN.png`` plus the four list files ``train800.txt
val200.txt train800val200.txt test.txt``), so ``vtab.py`` reads mini-VTAB and the real benchmark the same way.
All images are written as 32x32 RGB PNG (greyscale repeated to 3 channels).

Determinism: the seed and the builder version fix every pixel. Each task and split draws from its own
``numpy.random.default_rng([seed, crc32(task), split])`` stream, so building a subset of tasks gives the
same bytes as a full build. A build goes into a temporary sibling folder that is renamed into place, so a
crash never leaves a half-written tree at ``out``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import DataError
from .manifest import BUILDER_VERSION, MANIFEST, checksum
from .sources import source_name, source_sha256
from .tasks import IMAGE_SIZE, N_TEST, N_TRAIN, N_VAL, SPLIT_IDS, MiniTask, Sizes, Split, resolve_tasks

DEFAULT_SEED = 0
MAX_SEED = 2**32 - 1  # numpy's legacy seeding range; mini-VTAB takes the same seeds as the search's samplers


def check_seed(seed: object) -> int:
    """The seed as an int, or a ``DataError`` naming the allowed range."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        shown = repr(seed) if len(repr(seed)) <= 30 else f"an integer of {len(str(abs(seed)))} digits"
        raise DataError(f"mini-VTAB seed must be an integer between 0 and {MAX_SEED:,}, got {shown}")
    return int(seed)


def _to_rgb(images: np.ndarray) -> np.ndarray:
    return images if images.ndim == 4 else np.repeat(images[..., None], 3, axis=-1)


def _write_split(task_dir: Path, split: str, images: np.ndarray, labels: np.ndarray) -> tuple[str, str]:
    """Write PNGs and the list file; return (sha256 of the list file, sha256 of the raw RGB pixels)."""
    img_dir = task_dir / "images" / split
    img_dir.mkdir(parents=True)
    lines, pix = [], hashlib.sha256()
    for i, (img, lab) in enumerate(zip(images, labels)):
        rel = f"images/{split}/{i:06d}.png"
        Image.fromarray(img, "RGB").save(task_dir / rel, format="PNG", compress_level=6)
        lines.append(f"{rel} {int(lab)}\n")
        pix.update(np.ascontiguousarray(img).tobytes())
    text = "".join(lines).encode()
    (task_dir / f"{split}.txt").write_bytes(text)
    return hashlib.sha256(text).hexdigest(), pix.hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the real zip duplicates these files; a hard link costs no space
    except OSError:
        shutil.copyfile(src, dst)


def _write_trainval(task_dir: Path, train: Split, val: Split) -> tuple[str, str]:
    """train800val200 = train800 then val200, renumbered from 0 in its own folder (as in the NOAH zip)."""
    split = "train800val200"
    (task_dir / "images" / split).mkdir(parents=True)
    lines, pix = [], hashlib.sha256()
    sources = [("train800", i) for i in range(len(train[1]))] + [("val200", i) for i in range(len(val[1]))]
    labels = np.concatenate([train[1], val[1]])
    for j, ((src_split, i), lab) in enumerate(zip(sources, labels)):
        rel = f"images/{split}/{j:06d}.png"
        _link_or_copy(task_dir / "images" / src_split / f"{i:06d}.png", task_dir / rel)
        lines.append(f"{rel} {int(lab)}\n")
    for images in (train[0], val[0]):
        for img in images:
            pix.update(np.ascontiguousarray(img).tobytes())
    text = "".join(lines).encode()
    (task_dir / f"{split}.txt").write_bytes(text)
    return hashlib.sha256(text).hexdigest(), pix.hexdigest()


def _task_seed(seed: int, name: str) -> list[int]:
    return [int(seed), zlib.crc32(name.encode())]


def build_task(task: MiniTask, out: Path, seed: int, sizes: Sizes) -> dict:
    """Generate and write one task folder; return its manifest entry."""
    base = _task_seed(seed, task.name)
    rngs = {s: np.random.default_rng([*base, k]) for s, k in SPLIT_IDS.items()}
    splits = task.make(np.random.default_rng([*base, 99]), rngs, sizes)
    task_dir = out / task.name
    task_dir.mkdir(parents=True)
    entry: dict = {"group": task.group, "num_classes": task.num_classes, "splits": {}}
    for split in SPLIT_IDS:
        images, labels = splits[split]
        short = len(labels) == 0 if split == "test" else len(labels) != sizes.of(split)
        if short:  # test may be smaller than asked where the source is small, but not empty
            raise DataError(f"mini-VTAB {task.name}: the source has too few images for {split}={sizes.of(split)}")
        images = _to_rgb(images)
        if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or images.dtype != np.uint8:
            raise AssertionError(f"{task.name}/{split}: bad image array {images.shape} {images.dtype}")
        if labels.min(initial=0) < 0 or labels.max(initial=0) >= task.num_classes:
            raise AssertionError(f"{task.name}/{split}: label out of range")
        splits[split] = (images, labels)
        list_sha, pix_sha = _write_split(task_dir, split, images, labels)
        entry["splits"][split] = {"count": len(labels), "list_sha256": list_sha, "images_sha256": pix_sha}
    list_sha, pix_sha = _write_trainval(task_dir, splits["train800"], splits["val200"])
    n_tv = entry["splits"]["train800"]["count"] + entry["splits"]["val200"]["count"]
    entry["splits"]["train800val200"] = {"count": n_tv, "list_sha256": list_sha, "images_sha256": pix_sha}
    (task_dir / "classes.txt").write_text("".join(f"{c}\n" for c in task.classes))
    entry["sources"] = [source_name(s) for s in task.sources]
    return entry


def _build_into(out: Path, seed: int, tasks: Sequence[MiniTask], sizes: Sizes) -> dict:
    entries = {task.name: build_task(task, out, seed, sizes) for task in tasks}
    used = sorted({s for task in tasks for s in task.sources})
    manifest = {
        "name": "mini-vtab",
        "format": "vtab-1k-noah",
        "builder_version": BUILDER_VERSION,
        "seed": int(seed),
        "image_size": IMAGE_SIZE,
        "sizes": {"n_train": sizes.n_train, "n_val": sizes.n_val, "n_test": sizes.n_test},
        "tasks": entries,
        "source_sha256": {source_name(s): source_sha256(s) for s in used},
        "built_with": {"numpy": np.__version__, "pillow": Image.__version__},
    }
    manifest["checksum"] = checksum(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def build_mini_vtab(
    out: str | os.PathLike[str],
    seed: int = DEFAULT_SEED,
    *,
    tasks: Sequence[str] | None = None,
    n_train: int = N_TRAIN,
    n_val: int = N_VAL,
    n_test: int = N_TEST,
) -> dict:
    """Build mini-VTAB into ``out`` (which must not exist yet) atomically; return the manifest."""
    dest = Path(out)
    seed = check_seed(seed)
    if dest.exists():
        raise DataError(f"{dest} already exists; remove it or choose another --out")
    chosen, sizes = resolve_tasks(tasks), Sizes(n_train, n_val, n_test)
    if min(n_train, n_val, n_test) < 1:
        raise DataError(f"split sizes must be >= 1, got train {n_train}, val {n_val}, test {n_test}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    except OSError as e:
        why = f"{e.strerror or type(e).__name__}: {e.filename or dest.parent}"
        raise DataError(f"{dest}: cannot create ({why})") from None
    try:
        manifest = _build_into(tmp, seed, chosen, sizes)
        os.rename(tmp, dest)  # atomic on one filesystem; fails if someone else finished first
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest
