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
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import DataError
from ...safeio import load_json
from ..vtab import SPLITS, ListLineError, parse_list_line

BUILDER_VERSION = 1  # bump when any pixel or list line of a seed's build changes
MANIFEST = "manifest.json"


def checksum(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k not in ("checksum", "built_with")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_manifest(root: str | os.PathLike[str]) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found (not a mini-VTAB build)")
    manifest = load_json(path, error=DataError, what="mini-VTAB manifest", max_bytes=16 * 1024 * 1024)
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: must be a JSON object (a mini-VTAB manifest), got {type(manifest).__name__}")
    return manifest


def _pixels_sha(task_dir: Path, rels: list[str]) -> str:
    pix = hashlib.sha256()
    for rel in rels:
        with Image.open(task_dir / rel) as im:
            pix.update(np.asarray(im.convert("RGB"), np.uint8).tobytes())
    return pix.hexdigest()


def _listed(lf: Path, data: bytes) -> tuple[list[str], str | None]:
    """The image paths of a list file, or the first problem (a bad line, a path leaving the task folder)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], f"{lf}: not UTF-8 text"
    rels = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        try:
            parsed = parse_list_line(line)
        except ListLineError as e:
            return [], f"{lf}:{lineno}: {e}"
        if parsed is not None:
            rels.append(parsed[0])
    return rels, None


def _split_problems(r: Path, task: str, split: str, info: object, deep: bool) -> list[str]:
    where = f"{r / MANIFEST}: tasks.{task}.splits.{split}"
    if split not in SPLITS:
        return [f"{where}: unknown split; allowed: {', '.join(SPLITS)}"]
    if not isinstance(info, dict) or not isinstance(info.get("list_sha256"), str):
        return [f"{where}: list_sha256 is missing"]
    lf = r / task / f"{split}.txt"
    if not lf.is_file():
        return [f"{lf}: missing"]
    data = lf.read_bytes()
    if hashlib.sha256(data).hexdigest() != info["list_sha256"]:
        return [f"{lf}: sha256 differs from the manifest"]
    rels, bad = _listed(lf, data)
    if bad:
        return [bad]
    missing = [rel for rel in rels if not (r / task / rel).is_file()]
    if missing:
        return [f"{lf}: {len(missing)} listed image(s) missing, e.g. {missing[0]}"]
    if deep:
        try:
            same = _pixels_sha(r / task, rels) == info.get("images_sha256")
        except (OSError, ValueError, SyntaxError) as e:
            return [f"{lf}: cannot read a listed image ({e})"]
        if not same:
            return [f"{r / task}/images/{split}: pixels differ from the manifest"]
    return []


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
        problems.append(f"{r / MANIFEST}: builder version {found!r} != {BUILDER_VERSION}")
    if manifest.get("checksum") != checksum(manifest):
        problems.append(f"{r / MANIFEST}: checksum does not match its content")
    tasks = manifest.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        return [*problems, f"{r / MANIFEST}: tasks: must be a mapping of task name -> entry"]
    for task, entry in tasks.items():
        splits = entry.get("splits") if isinstance(entry, dict) else None
        if not re.fullmatch(r"[A-Za-z0-9_]+", task):
            problems.append(f"{r / MANIFEST}: tasks.{task[:40]}: not a task folder name")
        elif not isinstance(splits, dict) or not splits:
            problems.append(f"{r / MANIFEST}: tasks.{task}.splits: must be a mapping of split -> checksums")
        else:
            for split, info in splits.items():
                problems += _split_problems(r, task, str(split), info, deep)
    return problems
