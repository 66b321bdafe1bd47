"""A projection's output split into channel slices whose gradients the fused CPU kernels write into one buffer.

The mixers split a (batch, L, W) projection into channels-innermost (batch, C_i, L) views: in_proj's output into
x and z, x_proj's into dt, B and C. torch's split backward concatenates the slices' gradients: a full read and
write of the projection's gradient every step (2-3 % of a mamba-proxy training step). Here the kernels that
compute those gradients (the conv's dx; the scan's dz, d(dt), dB, dC) take them from one shared (batch, L, W)
buffer (``row_slice_grad``), and ``split_channels``'s backward returns that buffer as it is when its slices'
gradients are exactly its columns. Which kernel allocates first does not matter; when the gradients are anything
else (another backend, a sum of two uses, a cast), the backward concatenates as torch's does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
from torch import Tensor

_lock = threading.Lock()
# (storage, first element of the rows, batch, L, W, dtype) -> [shared buffer, column slices handed out]
_open: OrderedDict[tuple, list] = OrderedDict()
_MAX_OPEN = 4  # rows whose other slices have not asked yet; the oldest is forgotten (its buffer then stays its own)


def _row_slice(t: Tensor) -> tuple[int, int] | None:
    """(column, row width W) when ``t`` (batch, C, L) is columns [column, column + C) of (batch, L, W) rows, W > C."""
    if t.dim() != 3 or not t.is_cpu:
        return None
    (batch, c, length), (s0, s1, width) = t.shape, t.stride()  # one call each: this runs for every gradient
    if s1 != 1 or width <= c or s0 != length * width or batch * c * length == 0:
        return None
    col = t.storage_offset() % width
    return (col, width) if col + c <= width else None


def row_slice_grad(t: Tensor) -> Tensor | None:
    """An uninitialised gradient for ``t`` laid out as ``t``, when ``t`` is a column slice of a wider row tensor:
    a view of one (batch, L, W) buffer shared by all the slices of those rows; else None."""
    where = _row_slice(t)
    if where is None:
        return None
    col, width = where
    batch, c, length = t.shape
    key = (t.untyped_storage().data_ptr(), t.storage_offset() - col, batch, length, width, t.dtype)
    with _lock:
        entry = _open.get(key)
        if entry is None or any(col < e and s < col + c for s, e in entry[1]):  # new rows, or this slice again
            entry = [torch.empty((batch, length, width), dtype=t.dtype), []]
            _open[key] = entry
            while len(_open) > _MAX_OPEN:
                _open.popitem(last=False)
        entry[1].append((col, col + c))
        if sum(e - s for s, e in entry[1]) == width:  # every column handed out: nothing more to pair
            del _open[key]
    return entry[0][..., col : col + c].transpose(1, 2)


def _joined(grads: tuple[Tensor | None, ...], sizes: list[int], width: int) -> Tensor | None:
    """The (batch, L, W) tensor whose column slices are exactly ``grads`` ((batch, C_i, L) views), or None."""
    first = grads[0]
    if any(g is None for g in grads) or first.storage_offset() % width:
        return None
    batch, _, length = first.shape
    ptr, offset, col = first.untyped_storage().data_ptr(), first.storage_offset(), 0
    for g, size in zip(grads, sizes):
        if (g.untyped_storage().data_ptr() != ptr or g.dtype != first.dtype or g.storage_offset() != offset + col
                or tuple(g.shape) != (batch, size, length) or g.stride() != (length * width, 1, width)):
            return None
        col += size
    return first.as_strided((batch, length, width), (length * width, width, 1), offset)


def _views(t: Tensor, sizes: list[int]) -> tuple[Tensor, ...]:
    return tuple(p.transpose(1, 2) for p in t.split(sizes, dim=-1))


class _SplitChannels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, sizes: list[int]) -> tuple[Tensor, ...]:
        ctx.sizes, ctx.shape, ctx.dtype = sizes, t.shape, t.dtype
        ctx.set_materialize_grads(False)
        return _views(t, sizes)

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, None]:
        batch, length, width = ctx.shape
        if all(g is None for g in grads):
            return None, None
        joined = _joined(grads, ctx.sizes, width)
        if joined is None:
            joined = torch.cat([torch.zeros((batch, length, s), dtype=ctx.dtype) if g is None else g.transpose(1, 2)
                                for g, s in zip(grads, ctx.sizes)], dim=-1)
        return joined, None


def split_channels(t: Tensor, sizes: list[int]) -> tuple[Tensor, ...]:
    """``t`` (batch, L, W) split along its last axis into channels-innermost (batch, C_i, L) views (torch's split,
    each part transposed); its backward reuses the gradients' shared buffer."""
    if t.dim() != 3 or sum(sizes) != t.shape[-1]:
        raise ValueError(f"split_channels: sizes {sizes} must add up to the last axis of a 3-d tensor; "
                         f"got {tuple(t.shape)}")
    if t.device.type != "cpu" or not (torch.is_grad_enabled() and t.requires_grad):
        return _views(t, sizes)
    return _SplitChannels.apply(t, list(sizes))


__all__ = ["row_slice_grad", "split_channels"]
