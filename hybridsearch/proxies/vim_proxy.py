"""Pretraining of the bundled proxy backbones (run once; the results are committed under ``assets/``).

``vim-proxy``: a 4-layer Vim (d_model 64, d_state 8, patch 8 on 32x32, 16 patches + middle cls token)
trained from scratch on Fashion-MNIST (Debian ``dataset-fashion-mnist``; 28x28 grey padded to 32x32 and
repeated to RGB, ImageNet normalisation as the VTAB loader), saved in hustvl's ``{"model": ...}`` format.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..models import MODELS, build
from ..models.checkpoint import save_vim
from ..training.classifier import evaluate, train_classifier
from ..training.recipe import Recipe

VIM_PROXY = MODELS.get("vim-proxy").config  # one definition: the registry's
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or plain): uint8 images (n, rows, cols) or labels (n,)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    magic, n = struct.unpack(">II", raw[:8])
    if magic == 0x801:
        return np.frombuffer(raw, np.uint8, n, 8).copy()
    if magic == 0x803:
        rows, cols = struct.unpack(">II", raw[8:16])
        return np.frombuffer(raw, np.uint8, n * rows * cols, 16).reshape(n, rows, cols).copy()
    raise DataError(f"{path}: not an IDX uint8 file (magic {magic:#x})")


def fashion_mnist(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 3, 32, 32) and int64 labels of Fashion-MNIST ``train`` or ``t10k``."""
    prefix = "train" if split == "train" else "t10k"
    img = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    lab = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    img = np.pad(img, ((0, 0), (2, 2), (2, 2)))
    x = torch.from_numpy(img).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(lab.astype(np.int64))


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: {stem}[.gz] not found (install Debian's dataset-fashion-mnist or pass --data)")


def shift_flip(x: torch.Tensor, gen: torch.Generator, max_shift: int = 3) -> torch.Tensor:
    """Per-image random translation (zero fill, up to ``max_shift`` px) and horizontal flip: cheap augmentation
    that keeps the features less tied to Fashion-MNIST's centred layout, so they transfer to position tasks."""
    n, _, h, w = x.shape
    pad = torch.nn.functional.pad(x, (max_shift,) * 4, value=float(x.min()))
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, x.shape[1], h, w + 2 * max_shift)
    out = pad.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Each image of x (n, C, H, W) rotated by k[i] * 90 degrees."""
    out = x.clone()
    for r in (1, 2, 3):
        m = k == r
        out[m] = torch.rot90(x[m], r, dims=(-2, -1))
    return out


def pretext_batch(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift + flip, then the rotation pretext (Gidaris et al., 2018): each image turned by k * 90 degrees and
    labelled class * 4 + k. Predicting the class and the turn together keeps orientation and layout in the
    features, which a class-only objective discards and the structured mini-VTAB tasks need."""
    k = torch.randint(0, 4, (len(x),), generator=gen)
    return rotate(shift_flip(x, gen), k), y * 4 + k


def pretrain_vim_proxy(data: Path, out: Path, epochs: int = 8, seed: int = 0, limit: int | None = None,
                       log=None) -> dict:
    """Train on (class x rotation) = 40 labels; the saved head keeps the 10 upright rows, so the checkpoint is
    a plain 10-class Fashion-MNIST classifier."""
    log = log or (lambda msg: print(msg, flush=True))
    from ..data.vtab import normalize

    torch.manual_seed(seed)
    Xtr, ytr = fashion_mnist(data, "train")
    Xte, yte = fashion_mnist(data, "t10k")
    if limit:
        Xtr, ytr, Xte, yte = Xtr[:limit], ytr[:limit], Xte[: limit // 5], yte[: limit // 5]
    Xtr, Xte = normalize(Xtr), normalize(Xte)
    # per-epoch check: 2,000 test images in all four turns, 40-way
    n_check = min(2000, len(Xte))
    k = torch.arange(4).repeat_interleave(n_check)
    check = (rotate(Xte[:n_check].repeat(4, 1, 1, 1), k), yte[:n_check].repeat(4) * 4 + k)
    model = build(replace(VIM_PROXY, num_classes=4 * VIM_PROXY.num_classes))
    recipe = Recipe(lr=2e-3, weight_decay=0.05, batch_size=128, epochs=epochs, warmup_epochs=0.3, grad_clip=5.0)

    def on_epoch(e: int, acc: float) -> None:  # save every epoch: a long run interrupted keeps its progress
        upright = _upright(model)
        save_vim(upright, out)
        log(f"epoch {e + 1}/{epochs}: class x rotation accuracy {acc:.4f} ({n_check:,} test images x 4 turns), "
            f"upright class accuracy {evaluate(upright, Xte, yte):.4f}; saved {out}")

    res = train_classifier(model, (Xtr, ytr), check, recipe, seed=seed, on_epoch=on_epoch, augment=pretext_batch)
    upright = _upright(model)
    save_vim(upright, out)
    return {"test_accuracy": evaluate(upright, Xte, yte), "class_x_rotation_accuracy": res.val_acc,
            "epochs": epochs, "seconds": res.seconds, "train_images": len(Xtr), "test_images": len(Xte),
            "recipe": recipe.to_dict(), "params": sum(p.numel() for p in upright.parameters())}


def _upright(model: torch.nn.Module) -> torch.nn.Module:
    """The 10-class model: the head rows of the unrotated labels (class * 4 + 0)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["head.weight"], sd["head.bias"] = sd["head.weight"][0::4], sd["head.bias"][0::4]
    upright = build(replace(VIM_PROXY))
    upright.load_state_dict(sd)
    return upright.eval()
