"""split_channels: the mixers' projection split, whose backward returns the kernels' shared gradient buffer as it is
when the slices' gradients are exactly its columns, and concatenates otherwise (as torch's split does)."""

from __future__ import annotations

import shutil

import pytest
import torch

from hybridsearch.kernels import causal_conv1d, selective_scan, split_channels
from hybridsearch.kernels import split as S


def _plain(t: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    return tuple(p.transpose(1, 2) for p in t.split(sizes, dim=-1))


@pytest.mark.parametrize("sizes", [[5, 5], [3, 4, 4], [1, 6, 2]])
def test_views_and_gradients_as_torch_split(sizes: list[int]) -> None:
    t = torch.randn(2, 7, sum(sizes), requires_grad=True)
    parts = split_channels(t, sizes)
    for p, q in zip(parts, _plain(t.detach(), sizes)):
        assert p.shape == q.shape and p.stride() == q.stride() and torch.equal(p, q)
    gs = [torch.randn(p.shape) for p in parts]  # ordinary (unshared) gradients: concatenated
    (g_t,) = torch.autograd.grad(parts, t, gs)
    assert torch.equal(g_t, torch.cat([g.transpose(1, 2) for g in gs], dim=-1))


def test_an_unused_slice_gets_a_zero_gradient() -> None:
    t = torch.randn(2, 3, 8, requires_grad=True)
    x, z = split_channels(t, [4, 4])
    (z * 2).sum().backward()
    assert torch.equal(t.grad[..., :4], torch.zeros(2, 3, 4))
    assert torch.equal(t.grad[..., 4:], torch.full((2, 3, 4), 2.0))


def test_slices_of_one_buffer_are_returned_without_a_copy_in_either_order() -> None:
    t = torch.randn(3, 5, 12, requires_grad=True)
    for order in ((0, 1), (1, 0)):  # which kernel asks first does not matter
        parts = split_channels(t, [4, 8])
        grads: list[torch.Tensor | None] = [None, None]
        for i in order:
            grads[i] = S.row_slice_grad(parts[i].detach())
            grads[i].copy_(torch.randn(parts[i].shape))
        buf = grads[0].transpose(1, 2)
        assert grads[1].untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()
        (g_t,) = torch.autograd.grad(parts, t, grads)
        assert g_t.data_ptr() == buf.data_ptr() and g_t.shape == t.shape and g_t.is_contiguous()
        assert torch.equal(g_t, torch.cat([g.transpose(1, 2) for g in grads], dim=-1))


def test_columns_of_one_buffer_in_another_order_are_concatenated() -> None:
    t = torch.randn(2, 4, 6, requires_grad=True)
    parts = split_channels(t, [3, 3])
    buf = torch.randn(2, 4, 6)
    swapped = (buf[..., 3:].transpose(1, 2), buf[..., :3].transpose(1, 2))  # one storage, the wrong columns
    (g_t,) = torch.autograd.grad(parts, t, swapped)
    assert torch.equal(g_t, torch.cat([buf[..., 3:], buf[..., :3]], dim=-1))


def test_row_slice_grad_only_for_column_slices_and_bounded() -> None:
    assert S.row_slice_grad(torch.randn(2, 4, 5)) is None  # contiguous (batch, C, L)
    assert S.row_slice_grad(torch.randn(2, 5, 4).transpose(1, 2)) is None  # all the columns of its rows
    x = torch.randn(2, 5, 8)[..., :4].transpose(1, 2)
    g1, g2 = S.row_slice_grad(x), S.row_slice_grad(x)  # the same slice twice: a second buffer
    assert g1.shape == g2.shape == x.shape and g1.stride() == x.stride()
    assert g1.untyped_storage().data_ptr() != g2.untyped_storage().data_ptr()
    keep = [torch.randn(2, 5, 8) for _ in range(10)]  # slices whose partners never ask: the table stays small
    for k in keep:
        S.row_slice_grad(k[..., :4].transpose(1, 2))
    assert len(S._open) <= S._MAX_OPEN


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler")
@pytest.mark.parametrize("reverse", [False, True])
def test_conv_and_scan_write_one_buffer_and_match_the_reference(reverse: bool, monkeypatch) -> None:
    """The mixer's pattern: x -> conv, z -> the scan's gate, both halves of one projection; the cpu kernels' x and z
    gradients land in one buffer that becomes the projection's gradient, equal to the reference backend's."""
    monkeypatch.delenv("HYBRIDSEARCH_SCAN_BACKEND", raising=False)
    joined: list[bool] = []
    real = S._joined

    def spy(*args):
        out = real(*args)
        joined.append(out is not None)
        return out

    monkeypatch.setattr(S, "_joined", spy)
    g = torch.Generator().manual_seed(0)
    batch, L, E, N = 2, 9, 16, 4
    xz0 = torch.randn(batch, L, 2 * E, generator=g)
    w, b = torch.randn(E, 4, generator=g) * 0.3, torch.randn(E, generator=g) * 0.1
    A = -torch.rand(E, N, generator=g) - 0.5
    proj = torch.randn(batch, L, 2 + 2 * N, generator=g)  # dt (rank 2), B, C as x_proj's output
    W = torch.randn(E, 2, generator=g) * 0.5
    grads = {}
    for backend in ("reference", "cpu"):
        xz, p = xz0.clone().requires_grad_(), proj.clone().requires_grad_()
        x, z = split_channels(xz, [E, E])
        dt, B, C = split_channels(p, [2, N, N])
        u = causal_conv1d(x, w, b, reverse=reverse, backend=backend)
        y = selective_scan(u, dt, A, B, C, z=z, delta_softplus=True, reverse=reverse, backend=backend, delta_proj=W)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads[backend] = (xz.grad, p.grad)
    assert joined == [False, False, True, True]  # the reference's gradients concatenated; the cpu kernels' buffers
    for ref, got in zip(grads["reference"], grads["cpu"]):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
