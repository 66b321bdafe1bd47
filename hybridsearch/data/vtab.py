"""VTAB-1k in the NOAH layout (the zip used by NOAH, RepAdapter and MambaPEFT).

Layout: ``<root>/<task>/{train800,val200,train800val200,test}.txt``; each line is
``images/<split>/NNNNNN.jpg <int label>`` with the path relative to the task folder (jpg or png).
Preprocessing follows MambaPEFT's VTAB recipe: RGB convert, bicubic resize to a square, ImageNet
mean/std, no augmentation. Two paths read a split:

* ``VtabDataset``: a classic map-style dataset that decodes per item;
* ``load_split`` + ``normalize``: decodes a whole split once into a uint8 tensor kept in memory, because
  a trial trains many epochs on the same 1,000 images and re-decoding each epoch wastes the CPU.

Every malformed input raises ``DataError`` naming the list file and line (or the manifest key); ``check_vtab``
collects the same problems for a whole tree without raising. An image path must stay inside its task folder (no
absolute path, no ``..``): a list file never makes the loader read a file outside the data root.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ..safeio import load_json, read_text

SPLITS: tuple[str, ...] = ("train800", "val200", "train800val200", "test")
GROUPS: tuple[str, ...] = ("natural", "specialized", "structured")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# MambaPEFT's search objective: mean top-1 over these five tasks.
SEARCH_TASKS: tuple[str, ...] = ("clevr_count", "dmlab", "oxford_iiit_pet", "patch_camelyon", "sun397")
MAX_CLASSES = 1_000_000  # a class count (and a label) beyond this describes no dataset
_MAX_META_BYTES = 16 * 1024 * 1024  # manifest.json, classes.txt
_MAX_LIST_BYTES = 64 * 1024 * 1024  # a list file: the largest real one (dsprites test.txt) is about 3 MB
_LABEL_RE = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class VtabTask:
    name: str
    num_classes: int
    group: str


def _table(group: str, items: Iterable[tuple[str, int]]) -> dict[str, VtabTask]:
    return {name: VtabTask(name, n, group) for name, n in items}


# Class counts from MambaPEFT's NUM_CLASSES table; group split is the standard VTAB one.
VTAB_TASKS: dict[str, VtabTask] = {
    **_table(
        "natural",
        [("cifar", 100), ("caltech101", 102), ("dtd", 47), ("oxford_flowers102", 102),
         ("oxford_iiit_pet", 37), ("svhn", 10), ("sun397", 397)],
    ),
    **_table(
        "specialized",
        [("patch_camelyon", 2), ("eurosat", 10), ("resisc45", 45), ("diabetic_retinopathy", 5)],
    ),
    **_table(
        "structured",
        [("clevr_count", 8), ("clevr_dist", 6), ("dmlab", 6), ("kitti", 4), ("dsprites_loc", 16),
         ("dsprites_ori", 16), ("smallnorb_azi", 18), ("smallnorb_ele", 9)],
    ),
}


class VtabEntry(NamedTuple):
    path: Path  # absolute image path
    label: int
    list_file: Path
    line: int  # 1-based line in list_file


# ----------------------------------------------------------------------------------------- list files


def _check_root(root: str | os.PathLike[str]) -> Path:
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"VTAB root {r} does not exist or is not a directory")
    return r


def list_file(root: str | os.PathLike[str], task: str, split: str) -> Path:
    if split not in SPLITS:
        raise DataError(f"unknown VTAB split {split!r}; allowed: {', '.join(SPLITS)}")
    return Path(root) / task / f"{split}.txt"


class ListLineError(ValueError):
    """A malformed list line; the caller adds file and line number."""



def _leaves_folder(rel: str) -> bool:
    p = rel.replace("\\", "/")
    return p.startswith("/") or re.match(r"[A-Za-z]:", p) is not None or ".." in p.split("/")


def parse_list_line(text: str) -> tuple[str, int] | None:
    """One list line -> (relative path, label); None for a blank line; ``ListLineError`` when malformed."""
    fields = text.split()
    if not fields:
        return None
    if len(fields) != 2:
        got = f"got {len(fields)}: {text.strip()[:200]!r}"
        raise ListLineError(f"expected '<image path> <int label>' (2 fields), {got}")
    rel, label = fields
    if not _LABEL_RE.fullmatch(label):
        raise ListLineError(f"label {label[:40]!r} is not an integer")
    if len(label.lstrip("+-")) > 7 or int(label) > MAX_CLASSES - 1:
        raise ListLineError(f"label must be an integer between 0 and {MAX_CLASSES - 1:,}, got {label[:40]}"
                            f"{'...' if len(label) > 40 else ''}")
    if _leaves_folder(rel):
        raise ListLineError(f"image path {rel[:200]!r} leaves the task folder; paths are relative to it, as "
                            "images/<split>/NNNNNN.jpg")
    return rel, int(label)



def read_list(path: str | os.PathLike[str]) -> list[tuple[str, int, int]]:
    """Parse a list file into (relative path, label, line number); no image or range checks."""
    lf = Path(path)
    if not lf.is_file():
        raise DataError(f"list file {lf} not found")
    text = read_text(lf, error=DataError, what="list file", max_bytes=_MAX_LIST_BYTES)
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        try:
            parsed = parse_list_line(line)
        except ListLineError as e:
            raise DataError(f"{lf}:{lineno}: {e}") from None
        if parsed is not None:
            out.append((parsed[0], parsed[1], lineno))
    return out


# ---------------------------------------------------------------------------------------- class counts


class ClassCountError(DataError):
    """A manifest.json or classes.txt that cannot give a class count; ``file`` names it."""

    def __init__(self, file: Path, message: str) -> None:
        super().__init__(message if message.startswith(str(file)) else f"{file}: {message}")
        self.file = str(file)

    def __reduce__(self) -> tuple:
        return (DataError, (str(self),))


def _manifest_classes(root: Path, task: str) -> tuple[int, str] | None:
    mf = root / "manifest.json"
    if not mf.is_file():
        return None
    try:
        manifest = load_json(mf, error=DataError, what="manifest", max_bytes=_MAX_META_BYTES)
    except DataError as e:
        raise ClassCountError(mf, str(e)) from None
    if not isinstance(manifest, dict):
        raise ClassCountError(mf, "must be a JSON object with 'tasks' (task name -> {num_classes, group})")
    tasks = manifest.get("tasks", {})
    if not isinstance(tasks, dict):
        raise ClassCountError(mf, "tasks: must be a mapping of task name -> {num_classes, group}")
    info = tasks.get(task)
    if info is None:
        return None
    if not isinstance(info, dict):
        raise ClassCountError(mf, f"tasks.{task}: must be a mapping with num_classes (and group), "
                                  f"got {type(info).__name__}")
    if "num_classes" not in info:
        return None
    n, group = info["num_classes"], info.get("group", "unknown")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CLASSES:
        shown = repr(n) if len(repr(n)) <= 40 else repr(n)[:37] + "..."
        raise ClassCountError(mf, f"tasks.{task}.num_classes: must be an integer between 1 and {MAX_CLASSES:,}, "
                                  f"got {shown}")
    if not isinstance(group, str):
        raise ClassCountError(mf, f"tasks.{task}.group: must be a string (natural, specialized, structured), "
                                  f"got {type(group).__name__}")
    return n, group


def _classes_txt(root: Path, task: str) -> int | None:
    ct = root / task / "classes.txt"
    if not ct.is_file():
        return None
    try:
        text = read_text(ct, error=DataError, what="classes.txt", max_bytes=_MAX_META_BYTES)
    except DataError as e:
        raise ClassCountError(ct, str(e)) from None
    names = [ln for ln in text.splitlines() if ln.strip()]
    if len(names) > MAX_CLASSES:
        raise ClassCountError(ct, f"{len(names):,} classes; at most {MAX_CLASSES:,}")
    return len(names) or None


def _max_label(root: Path, task: str) -> int:
    best = -1
    for split in SPLITS:
        lf = list_file(root, task, split)
        if lf.is_file():
            best = max([best, *(lab for _, lab, _ in read_list(lf))])
    if best < 0:
        raise DataError(f"{root / task}: cannot infer the number of classes (no labelled list file)")
    return best + 1


def task_info(root: str | os.PathLike[str], task: str) -> tuple[VtabTask, str]:
    """Class count and group of ``task`` and where the count came from.

    The 19 real tasks use the MambaPEFT table; other folders (e.g. mini-VTAB) use ``<root>/manifest.json``,
    then ``<task>/classes.txt``, then max label + 1 over the list files ("inferred")."""
    if task in VTAB_TASKS:
        return VTAB_TASKS[task], "table"
    r = Path(root)
    found = _manifest_classes(r, task)
    if found is not None:
        return VtabTask(task, found[0], found[1]), "manifest"
    n = _classes_txt(r, task)
    if n is not None:
        return VtabTask(task, n, "unknown"), "classes.txt"
    return VtabTask(task, _max_label(r, task), "unknown"), "inferred"


def num_classes(root: str | os.PathLike[str], task: str) -> int:
    return task_info(root, task)[0].num_classes


def list_tasks(root: str | os.PathLike[str]) -> list[str]:
    """Task folders under ``root`` (those holding at least one of the four list files), sorted."""
    r = _check_root(root)

    def is_task(d: Path) -> bool:
        has_list = any((d / f"{s}.txt").is_file() for s in SPLITS)
        return d.is_dir() and not d.name.startswith((".", "_")) and has_list

    return sorted(d.name for d in r.iterdir() if is_task(d))


def split_entries(root: str | os.PathLike[str], task: str, split: str) -> list[VtabEntry]:
    """Entries of one split, checked: label in [0, C) and image file present (DataError with file:line)."""
    r = _check_root(root)
    if not (r / task).is_dir():
        raise DataError(f"VTAB task folder {r / task} not found")
    lf = list_file(r, task, split)
    n_cls = num_classes(r, task)
    entries = []
    for rel, label, lineno in read_list(lf):
        if not 0 <= label < n_cls:
            raise DataError(f"{lf}:{lineno}: label {label} out of range [0, {n_cls}) for task {task!r}")
        img = r / task / rel
        if not img.is_file():
            raise DataError(f"{lf}:{lineno}: image {img} not found")
        entries.append(VtabEntry(img, label, lf, lineno))
    return entries


# -------------------------------------------------------------------------------------------- decoding


def _size_tuple(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return image_size, image_size
    return int(image_size[0]), int(image_size[1])


def decode_image(entry: VtabEntry, image_size: int | tuple[int, int] | None) -> np.ndarray:
    """RGB uint8 array (H, W, 3), bicubic-resized to ``image_size`` (int: square; (H, W); None: native)."""
    size = _size_tuple(image_size)
    try:
        with Image.open(entry.path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
            return np.array(im, dtype=np.uint8)  # writable copy: torch.from_numpy warns on read-only
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{entry.list_file}:{entry.line}: cannot read image {entry.path}: {e}") from None


def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
    return mean, std


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) in [0, 255] -> float32 normalised with ImageNet mean/std (a new tensor)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {images.dtype}")
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"normalize expects (..., 3, H, W), got shape {tuple(images.shape)}")
    mean, std = _mean_std(images.device)
    return (images.float().div_(255.0) - mean) / std


class VtabDataset(torch.utils.data.Dataset):
    """Decodes one image per item: (float (3, H, W) ImageNet-normalised, int label)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        task: str,
        split: str,
        image_size: int | tuple[int, int] | None = 224,
    ) -> None:
        self.root, self.task, self.split = Path(root), task, split
        self.image_size = image_size
        self.entries = split_entries(root, task, split)
        info, _ = task_info(root, task)
        self.num_classes, self.group = info.num_classes, info.group

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        entry = self.entries[index]
        chw = torch.from_numpy(decode_image(entry, self.image_size)).permute(2, 0, 1)
        return normalize(chw), entry.label

    @property
    def labels(self) -> list[int]:
        return [e.label for e in self.entries]


# Small in-process cache: a search runs many trials on the same split in one worker.
_SPLIT_CACHE: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
_SPLIT_CACHE_MAX = 8


def clear_split_cache() -> None:
    _SPLIT_CACHE.clear()


def _decode_all(entries: Sequence[VtabEntry], image_size: int | tuple[int, int] | None, workers: int) -> list:
    if workers <= 1 or len(entries) < 64:
        return [decode_image(e, image_size) for e in entries]
    # PIL releases the GIL while decoding and resizing, so threads scale without pickling.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda e: decode_image(e, image_size), entries, chunksize=32))


def load_split(
    root: str | os.PathLike[str],
    task: str,
    split: str,
    image_size: int | tuple[int, int] | None = 224,
    *,
    cache: bool = True,
    workers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a whole split once: (uint8 (N, 3, H, W), int64 (N,)). Feed batches through ``normalize``.

    The result is cached in memory (keyed by the list file's mtime and size); treat it as read-only."""
    lf = list_file(root, task, split)
    try:
        st = lf.stat()
        key = (str(lf.resolve()), _size_tuple(image_size), st.st_mtime_ns, st.st_size)
    except OSError:
        key = None  # let split_entries raise the proper DataError
    if cache and key in _SPLIT_CACHE:
        _SPLIT_CACHE.move_to_end(key)
        return _SPLIT_CACHE[key]
    entries = split_entries(root, task, split)
    arrays = _decode_all(entries, image_size, workers or min(4, os.cpu_count() or 1))
    if image_size is None and arrays:
        shape0 = arrays[0].shape
        for e, a in zip(entries, arrays):
            if a.shape != shape0:
                raise DataError(
                    f"{e.list_file}:{e.line}: image {e.path} is {a.shape[1]}x{a.shape[0]}, expected "
                    f"{shape0[1]}x{shape0[0]}; pass image_size to resize"
                )
    h, w = (arrays[0].shape[:2] if arrays else (_size_tuple(image_size) or (0, 0)))
    stacked = np.stack(arrays) if arrays else np.zeros((0, h, w, 3), np.uint8)
    images = torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)))
    labels = torch.tensor([e.label for e in entries], dtype=torch.int64)
    if cache and key is not None:
        _SPLIT_CACHE[key] = (images, labels)
        while len(_SPLIT_CACHE) > _SPLIT_CACHE_MAX:
            _SPLIT_CACHE.popitem(last=False)
    return images, labels


# -------------------------------------------------------------------------------------------- checking


@dataclass
class Problem:
    file: str
    line: int | None
    # missing_task, missing_list, bad_list, bad_classes, bad_line, label_out_of_range, missing_image,
    # unreadable_image
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


@dataclass
class SplitReport:
    split: str
    list_file: str
    present: bool
    images: int = 0  # lines that parsed and point at a readable image with an in-range label
    lines: int = 0  # non-blank lines
    labels_seen: list[int] = field(default_factory=list)


@dataclass
class TaskReport:
    task: str
    group: str
    num_classes: int | None
    classes_source: str
    splits: dict[str, SplitReport] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def classes_seen(self) -> int:
        return len({lab for s in self.splits.values() for lab in s.labels_seen})


@dataclass
class VtabReport:
    root: str
    tasks: list[TaskReport]

    @property
    def problems(self) -> list[Problem]:
        return [p for t in self.tasks for p in t.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "ok": self.ok,
            "num_problems": len(self.problems),
            "tasks": [{**asdict(t), "classes_seen": t.classes_seen} for t in self.tasks],
        }


def _probe_image(path: Path, decode: bool) -> str | None:
    """None if the image opens (and fully decodes when ``decode``), else the reason."""
    try:
        with Image.open(path) as im:
            if decode:
                im.load()
                im.convert("RGB")
        return None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return str(e) or type(e).__name__


def _check_split(root: Path, task: str, split: str, n_cls: int | None, decode: bool, rep: TaskReport) -> None:
    lf = list_file(root, task, split)
    sr = SplitReport(split, str(lf), lf.is_file())
    rep.splits[split] = sr
    if not sr.present:
        rep.problems.append(Problem(str(lf), None, "missing_list", "list file not found"))
        return
    try:
        lines = read_text(lf, error=DataError, what="list file", max_bytes=_MAX_LIST_BYTES).splitlines()
    except DataError as e:
        rep.problems.append(Problem(str(lf), None, "bad_list", str(e).removeprefix(f"{lf}: ")))
        return
    candidates: list[tuple[Path, int, int]] = []
    for lineno, text in enumerate(lines, start=1):
        try:
            parsed = parse_list_line(text)
        except ListLineError as e:
            rep.problems.append(Problem(str(lf), lineno, "bad_line", str(e)))
            continue
        if parsed is None:
            continue
        sr.lines += 1
        rel, label = parsed
        if n_cls is not None and not 0 <= label < n_cls:
            msg = f"label {label} out of range [0, {n_cls})"
            rep.problems.append(Problem(str(lf), lineno, "label_out_of_range", msg))
            continue
        img = root / task / rel
        if not img.is_file():
            rep.problems.append(Problem(str(lf), lineno, "missing_image", f"image {img} not found"))
            continue
        candidates.append((img, label, lineno))
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(lambda c: _probe_image(c[0], decode), candidates))
    seen: set[int] = set()
    for (img, label, lineno), why in zip(candidates, reasons):
        if why is not None:
            msg = f"cannot read image {img}: {why}"
            rep.problems.append(Problem(str(lf), lineno, "unreadable_image", msg))
            continue
        sr.images += 1
        seen.add(label)
    sr.labels_seen = sorted(seen)
    if sr.lines == 0:
        rep.warnings.append(f"{lf}: list file is empty")


def _check_task(root: Path, task: str, decode: bool) -> TaskReport:
    if not (root / task).is_dir():
        rep = TaskReport(task, VTAB_TASKS[task].group if task in VTAB_TASKS else "unknown", None, "none")
        rep.problems.append(Problem(str(root / task), None, "missing_task", "task folder not found"))
        return rep
    try:
        info, source = task_info(root, task)
        rep = TaskReport(task, info.group, info.num_classes, source)
    except ClassCountError as e:  # a bad manifest or classes.txt: a problem of its own, no range check
        rep = TaskReport(task, "unknown", None, "unknown")
        rest = str(e)[len(e.file):].lstrip(":").strip()
        rep.problems.append(Problem(e.file, None, "bad_classes", rest))
    except DataError as e:  # a bad line while inferring C: reported by its split; keep going without a range check
        rep = TaskReport(task, "unknown", None, f"unknown ({e})")
    for split in SPLITS:
        _check_split(root, task, split, rep.num_classes, decode, rep)
    s = rep.splits
    both = [s[k] for k in ("train800", "val200", "train800val200")]
    if all(x.present for x in both) and both[0].lines + both[1].lines != both[2].lines:
        total = both[0].lines + both[1].lines
        rep.warnings.append(f"train800val200 has {both[2].lines} lines, train800 + val200 have {total}")
    return rep


def check_vtab(
    root: str | os.PathLike[str], tasks: Sequence[str] | None = None, *, decode: bool = True
) -> VtabReport:
    """Scan every task and split; collect counts, classes seen and every problem by file and line.

    Raises DataError only for a missing root. ``decode=False`` only opens image headers (much faster on
    the full benchmark, but misses truncated files)."""
    r = _check_root(root)
    names = list(tasks) if tasks else list_tasks(r)
    return VtabReport(str(r), [_check_task(r, t, decode) for t in names])
