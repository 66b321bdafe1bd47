"""The mini-VTAB tasks: what each one is and how its images are generated from the sources.

All images are **32x32** (greyscale here; the builder repeats them to 3 channels), so a patch-4 or patch-8 Vim
tiles them exactly. Each task has 800 train and 200 val images; test has 1,000 where the source allows.

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

A maker draws only from the generators it is given (one per split, one for pools), so the builder's seeding
alone fixes every pixel. ``MINI_TASKS`` is looked up only here (``resolve_tasks``), so tests can swap it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ...errors import DataError
from . import sources

IMAGE_SIZE = 32
N_TRAIN, N_VAL, N_TEST = 800, 200, 1000
SPLIT_IDS = {"train800": 0, "val200": 1, "test": 2}  # split name -> its rng stream id
_BICUBIC = Image.Resampling.BICUBIC

Split = tuple[np.ndarray, np.ndarray]  # images uint8 (N, 32, 32) grey or (N, 32, 32, 3), labels int64 (N,)


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
        labels = sources.mnist5k()[1]
        pools = {k: v[np.isin(labels[v], digits)] for k, v in pools.items()}
    return pools


@dataclass(frozen=True)
class Sizes:
    """Images per split (test may come out smaller where the source is small)."""

    n_train: int = N_TRAIN
    n_val: int = N_VAL
    n_test: int = N_TEST

    def of(self, split: str) -> int:
        return {"train800": self.n_train, "val200": self.n_val, "test": self.n_test}[split]


# A task maker gets one rng per split (plus one shared for pools) and returns the three splits.
Maker = Callable[[np.random.Generator, dict[str, np.random.Generator], Sizes], dict[str, Split]]


@dataclass(frozen=True)
class MiniTask:
    """One task: its VTAB group, class names (index = label), source names (see ``sources``) and maker."""

    name: str
    group: str
    num_classes: int
    sources: tuple[str, ...]
    classes: tuple[str, ...]
    make: Maker


# ------------------------------------------------------------------------------------------ task makers


def _make_mnist5k(pool_rng: np.random.Generator, rngs: dict, sizes: Sizes) -> dict[str, Split]:
    images, labels = sources.mnist5k()
    perm = pool_rng.permutation(len(labels))
    start, out = 0, {}
    for split in SPLIT_IDS:
        idx = perm[start : start + sizes.of(split)]
        start += len(idx)
        out[split] = (_stack([_pad_to(im) for im in images[idx]]), labels[idx])
    return out


def _make_digits(pool_rng: np.random.Generator, rngs: dict, sizes: Sizes) -> dict[str, Split]:
    images, labels = sources.digits()
    perm = pool_rng.permutation(len(labels))
    start, out = 0, {}
    for split in SPLIT_IDS:
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
    textures = [sources.texture(n) for n in _TEXTURES]
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
    lfw = sources.lfw()
    # label 1 = face (sources 0-99), 0 = non-face (100-199); split sources 50/20/30 per class.
    pools: dict[str, list[tuple[int, int]]] = {s: [] for s in SPLIT_IDS}
    for label, base in ((1, 0), (0, 100)):
        perm = base + pool_rng.permutation(100)
        for split, (a, b) in zip(SPLIT_IDS, ((0, 50), (50, 70), (70, 100))):
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
    images = sources.mnist5k()[0]
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
    images = sources.mnist5k()[0]
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
    images = sources.mnist5k()[0]
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


def resolve_tasks(tasks: Sequence[str] | None) -> list[MiniTask]:
    """The named tasks in the given order (all of them, in table order, for None or empty)."""
    names = list(tasks) if tasks else list(MINI_TASKS)
    unknown = [t for t in names if t not in MINI_TASKS]
    if unknown:
        raise DataError(f"unknown mini-VTAB task(s) {', '.join(unknown)}; allowed: {', '.join(MINI_TASKS)}")
    return [MINI_TASKS[t] for t in names]
