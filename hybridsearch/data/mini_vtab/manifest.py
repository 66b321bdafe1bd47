"""The mini-VTAB manifest: its checksum, reading it, and checking a build on disk against it.

``manifest.json`` records the seed, builder version, sizes, per-task classes and groups, sha256 of every list
file, and sha256 of each split's concatenated raw RGB pixels in list order (pixels rather than PNG bytes, so a
different zlib cannot change the checksum), plus sha256 of the source files. Its own ``checksum`` covers all of
that except the library versions it was built with.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import DataError

BUILDER_VERSION = 1  # bump when any pixel or list line of a seed's build changes
MANIFEST = "manifest.json"


def checksum(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k not in ("checksum", "built_with")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


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
    if manifest.get("checksum") != checksum(manifest):
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
