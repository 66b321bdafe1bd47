"""vim-proxy pretraining: the IDX reader, the augmentation and rotation pretext, the upright 10-class head, and a
one-epoch run on small IDX files in the real (gzip) format."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridsearch.errors import DataError
from hybridsearch.models import create_model
from hybridsearch.proxies.vim_proxy import (
    VIM_PROXY,
    _upright,
    fashion_mnist,
    pretext_batch,
    pretrain_vim_proxy,
    rotate,
    shift_flip,
)


def write_idx(root: Path, prefix: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes()))
    (root / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())  # plain


@pytest.fixture
def fashion(tmp_path: Path) -> Path:
    write_idx(tmp_path, "train", 96, 0)
    write_idx(tmp_path, "t10k", 40, 1)
    return tmp_path


def test_reader_pads_to_rgb_32(fashion):
    x, y = fashion_mnist(fashion, "train")
    assert x.shape == (96, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (96,) and int(y.max()) < 10
    assert x[:, :, :2].sum() == 0 and torch.equal(x[:, 0], x[:, 2])


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte\\[.gz\\] not found"):
        fashion_mnist(tmp_path, "train")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x09\x99" + bytes(12))
    with pytest.raises(DataError, match="train-images-idx3-ubyte: not an IDX uint8 file"):
        fashion_mnist(tmp_path, "train")


def test_rotation_pretext_labels_and_images():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 8)
    k = torch.tensor([0, 1, 2, 3] * 4)
    r = rotate(x, k)
    for i in range(16):
        assert torch.equal(r[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)))
    y = torch.arange(16) % 10
    xb, yb = pretext_batch(x, y, g)
    assert xb.shape == x.shape and torch.equal(yb // 4, y) and set(yb.remainder(4).tolist()) <= {0, 1, 2, 3}
    moved = shift_flip(x, torch.Generator().manual_seed(1))
    assert moved.shape == x.shape and not torch.equal(moved, x)


def test_upright_head_keeps_the_unrotated_rows():
    from dataclasses import replace

    from hybridsearch.models import build

    torch.manual_seed(0)
    joint = build(replace(VIM_PROXY, num_classes=40)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(_upright(joint)(x), joint(x)[:, 0::4])


def test_one_epoch_writes_a_loadable_10_class_checkpoint(fashion, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "proxy.pth"
    logs: list[str] = []
    info = pretrain_vim_proxy(fashion, out, epochs=1, log=logs.append)
    assert info["train_images"] == 96 and info["test_images"] == 40 and 0.0 <= info["test_accuracy"] <= 1.0
    assert len(logs) == 1 and "upright class accuracy" in logs[0]
    model = create_model("vim-proxy", checkpoint=out)
    assert model.head.out_features == 10
