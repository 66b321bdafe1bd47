"""PyTorch reference backend of the selective scan: exact fp32, runs anywhere, hand-written backward.

Design (chosen by measurement on CPU, see benchmarks/bench_scan_cpu.py):

* Per-element tensors are laid out (L, batch, groups, N, dim_per_group): one time step is one contiguous
  slice, so the recurrence is a single fused ``addcmul_`` per step over all of batch x dim x N, and the
  channel axis is innermost, so broadcasts and the reductions over N (y = C.h, dL/ddelta) are vectorised
  over channels (N innermost measured 1.1-1.8x slower: its batched (dim x N) matvecs are slow).
* The (L, batch) plane is cut into tiles of ``chunk`` positions x ``batch_tile`` sequences whose per-element
  buffers fit in cache (``_TILE_ELEMS``); the element-wise passes are memory-bound, so this matters more
  than the extra Python calls. Only the state entering each chunk is saved for backward (memory about
  N / chunk times one (batch, dim, L) fp32 tensor); the backward recomputes a chunk's states from it.
* ``reverse=True`` only changes which neighbour a step reads; nothing is flipped.
* A custom ``autograd.Function`` avoids a per-step autograd graph; without grad nothing is saved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# Elements (chunk * batch_tile * dim * N) of one fp32 tile buffer; three or four are live at once.
_TILE_ELEMS = 1 << 18
# Shortest chunk when L allows: bounds the saved chunk-entry states to N / _MIN_CHUNK inputs' worth.
_MIN_CHUNK = 8
# torch's softplus returns x unchanged above this (beta=1), so its derivative is exactly 1 there.
_SOFTPLUS_THRESHOLD = 20.0


def _plan(batch: int, L: int, per_item: int) -> tuple[int, int]:
    """(chunk, batch_tile) for per_item = dim * N elements per sequence and step."""
    chunk = min(L, max(_MIN_CHUNK, _TILE_ELEMS // max(batch * per_item, 1)))
    batch_tile = min(batch, max(1, _TILE_ELEMS // (chunk * per_item)))
    return max(chunk, 1), batch_tile


def _chunks(L: int, T: int, reverse: bool) -> list[tuple[int, int]]:
    """Chunk bounds in scan order (the backward walks them in the opposite order)."""
    bounds = [(s, min(s + T, L)) for s in range(0, L, T)]
    return bounds[::-1] if reverse else bounds


def _to_lbd(x: Tensor) -> Tensor:
    """(batch, dim, L) of any dtype -> new contiguous fp32 (L, batch, dim), in one pass."""
    batch, dim, L = x.shape
    return torch.empty((L, batch, dim), device=x.device).copy_(x.permute(2, 0, 1))


def _from_lbd(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(L, batch, dim) -> new contiguous (batch, dim, L) of dtype."""
    L, batch, dim = x.shape
    return torch.empty((batch, dim, L), dtype=dtype, device=x.device).copy_(x.permute(1, 2, 0))


class _Prep:
    """fp32 operands in (L, batch, ...) layout, shared by forward and backward.

    Everything of size batch * dim * L lives in (L, batch, dim) layout from here on; each fresh tensor of that
    size costs page faults on first touch, so the count of temporaries is kept small.
    """

    def __init__(self, u, delta, A, B, C, delta_bias, delta_softplus):
        batch, dim, L = u.shape
        if B.dim() == 3:
            B, C = B.unsqueeze(1), C.unsqueeze(1)
        if B.dim() != 4 or C.shape != B.shape:
            raise ValueError(
                f"B and C must both be (batch, N, L) or (batch, G, N, L); got {tuple(B.shape)}, {tuple(C.shape)}"
            )
        G, N = B.shape[1], B.shape[2]
        if dim % G or A.shape != (dim, N):
            raise ValueError(f"A must be (dim, N) = ({dim}, {N}) and dim divisible by the {G} groups")
        if A.is_complex():
            raise ValueError("the reference selective scan supports only real A")
        K = dim // G
        self.shape = (batch, dim, L, G, K, N)
        self.raw = _to_lbd(delta)  # (L, B, D) delta + bias, before softplus
        if delta_bias is not None:
            self.raw.add_(delta_bias.float())
        self.u = _to_lbd(u)  # (L, B, D)
        dlt = F.softplus(self.raw) if delta_softplus else self.raw  # (L, B, D)
        self.dlt = dlt.view(L, batch, G, K)  # (L, B, G, K)
        self.u_t = self.u.view(L, batch, G, K)  # (L, B, G, K)
        self.du = self.dlt * self.u_t  # (L, B, G, K)
        self.B = B.float().permute(3, 0, 1, 2).contiguous()  # (L, B, G, N)
        self.C = C.float().permute(3, 0, 1, 2).contiguous()  # (L, B, G, N)
        self.A = A.float().reshape(G, K, N).transpose(1, 2).contiguous()  # (G, N, K)


class _Work:
    """Flat scratch storage, viewed per tile as contiguous (T, nb, G, N, K) blocks."""

    def __init__(self, p: _Prep, T: int, bt: int, count: int):
        _, _, _, G, K, N = p.shape
        self.item = G * N * K
        self.dims = (G, N, K)
        self.bufs = [torch.empty((T + 1) * bt * self.item, device=p.u.device) for _ in range(count)]

    def view(self, i: int, steps: int, nb: int) -> Tensor:
        return self.bufs[i][: steps * nb * self.item].view(steps, nb, *self.dims)


def _run_chunk(p: _Prep, s: int, e: int, bs: slice, h0: Tensor, reverse: bool, dA: Tensor, S: Tensor) -> None:
    """Scan positions [s, e) of batch slice bs from the state h0 (nb, G, N, K) entering the chunk.

    dA (T, nb, G, N, K) gets exp(delta*A). S (T+1, nb, G, N, K) gets the states: forward S[0] = h0 and
    S[i+1] = h_{s+i}; reverse S[T] = h0 and S[i] = h_{s+i}.
    """
    T = e - s
    # h0 may be a row of the previous chunk's S (same storage): place it before the drive overwrites it.
    (S[T] if reverse else S[0]).copy_(h0)
    torch.mul(p.dlt[s:e, bs, :, None, :], p.A, out=dA).exp_()
    torch.mul(p.du[s:e, bs, :, None, :], p.B[s:e, bs, :, :, None], out=S[:T] if reverse else S[1:])  # delta*u*B
    Sv, dAv = S.unbind(0), dA.unbind(0)  # one call for all step views instead of three per step
    if reverse:
        for i in range(T - 1, -1, -1):
            Sv[i].addcmul_(dAv[i], Sv[i + 1])
    else:
        for i in range(T):
            Sv[i + 1].addcmul_(dAv[i], Sv[i])


def _state_in(h: Tensor, G: int) -> Tensor:
    """(batch, dim, N) -> fp32 (batch, G, N, K)."""
    batch, dim, N = h.shape
    return h.float().reshape(batch, G, dim // G, N).transpose(2, 3).contiguous()


def _state_out(h: Tensor) -> Tensor:
    """(batch, G, N, K) -> (batch, dim, N)."""
    batch, G, N, K = h.shape
    return h.transpose(2, 3).reshape(batch, G * K, N)


def _scan_forward(p: _Prep, h_init: Tensor | None, reverse: bool, save: bool):
    """y (L, B, D) fp32 before D and gating, last state (B, G, N, K), chunk-entry states or None."""
    batch, dim, L, G, K, N = p.shape
    T, bt = _plan(batch, L, dim * N)
    chunks = _chunks(L, T, reverse)
    dev = p.u.device
    work = _Work(p, T, bt, 2)
    y = torch.empty((L, batch, G, 1, K), device=dev)  # (L, B, G, 1, K)
    h_all = torch.zeros((batch, G, N, K), device=dev) if h_init is None else _state_in(h_init, G)
    bnd = torch.empty((len(chunks), batch, G, N, K), device=dev) if save else None
    last = torch.empty((batch, G, N, K), device=dev)
    for b0 in range(0, batch, bt):
        bs = slice(b0, min(b0 + bt, batch))
        nb = bs.stop - b0
        h = h_all[bs]
        for ci, (s, e) in enumerate(chunks):
            if bnd is not None:
                bnd[ci, bs] = h
            dA, S = work.view(0, e - s, nb), work.view(1, e - s + 1, nb)
            _run_chunk(p, s, e, bs, h, reverse, dA, S)
            hs = S[:-1] if reverse else S[1:]  # (T, nb, G, N, K) states at positions s..e-1
            y[s:e, bs] = torch.matmul(p.C[s:e, bs, :, None, :], hs)  # C_t . h_t as (1 x N) @ (N x K)
            h = S[0] if reverse else S[-1]
        last[bs] = h
    return y.view(L, batch, dim), last, bnd


def _finish(p: _Prep, y: Tensor, D: Tensor | None, z: Tensor | None, dtype: torch.dtype) -> Tensor:
    """out (B, D, L) of dtype = (y + D u) * silu(z); y (L, B, D) becomes y + D u in place."""
    if D is not None:
        y.addcmul_(p.u, D.float())
    if z is None:
        return _from_lbd(y, dtype)
    out = F.silu(z.float())  # (B, D, L)
    out.mul_(y.permute(1, 2, 0))
    return out.to(dtype)


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse):
        p = _Prep(u, delta, A, B, C, delta_bias, delta_softplus)
        y, last, bnd = _scan_forward(p, initial_state, reverse, save=True)
        out = _finish(p, y, D, z, u.dtype)  # y is now y + D u, which dL/dz needs
        ctx.set_materialize_grads(False)
        ctx.flags = (delta_softplus, reverse)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, y if z is not None else None, bnd)
        return out, _state_out(last)

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable: fail loudly on double grad
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, initial_state, yD, bnd = ctx.saved_tensors
        delta_softplus, reverse = ctx.flags
        needs = ctx.needs_input_grad  # u, delta, A, B, C, D, z, delta_bias, initial_state
        p = _Prep(u, delta, A, B, C, delta_bias, delta_softplus)
        batch, dim, L, G, K, N = p.shape
        dev = p.u.device

        # Output side, out = (y + D u) * silu(z), with yD = y + D u: all O(batch * dim * L).
        dz = dD = None
        if dout is None:
            dy = torch.zeros((L, batch, dim), device=dev)
        elif z is None:
            dy = _to_lbd(dout)  # (L, B, D)
        else:
            zf = z.float()
            sig = torch.sigmoid(zf)  # (B, D, L)
            silu = zf * sig
            dy = torch.empty((L, batch, dim), device=dev)
            torch.mul(dout.permute(2, 0, 1), silu.permute(2, 0, 1), out=dy)
            if needs[6]:
                # d silu / dz = sig (1 + z (1 - sig)) = sig + silu - silu sig
                dz = torch.addcmul(silu, silu, sig, value=-1).add_(sig).mul_(dout).mul_(yD.permute(1, 2, 0))
                dz = dz.to(z.dtype)
        if D is not None and needs[5]:
            dD = (dy * p.u).sum((0, 1)).to(D.dtype)
        dy_t = dy.view(L, batch, G, K)  # (L, B, G, K)

        T, bt = _plan(batch, L, dim * N)
        chunks = _chunks(L, T, reverse)
        work = _Work(p, T, bt, 3)
        ddlt = torch.empty((L, batch, G, K), device=dev)  # dL/d(delta after bias and softplus)
        du_t = torch.empty((L, batch, G, K), device=dev)
        dB = torch.empty((L, batch, G, N), device=dev) if needs[3] else None
        dC = torch.empty((L, batch, G, N), device=dev) if needs[4] else None
        dAp = torch.zeros((G, N, K), device=dev)
        dinit = torch.empty((batch, G, N, K), device=dev)
        dlast = None if dlast is None else _state_in(dlast, G)

        for b0 in range(0, batch, bt):
            bs = slice(b0, min(b0 + bt, batch))
            nb = bs.stop - b0
            # carry: dL/dh of the state entering the chunk handled before (in backward order) this one.
            carry = None if dlast is None else dlast[bs]
            for ci in range(len(chunks) - 1, -1, -1):
                s, e = chunks[ci]
                n = e - s
                dA, S, g = work.view(0, n, nb), work.view(1, n + 1, nb), work.view(2, n, nb)
                _run_chunk(p, s, e, bs, bnd[ci, bs], reverse, dA, S)
                hs, hp = (S[:-1], S[1:]) if reverse else (S[1:], S[:-1])  # h_t, h_{t-1} (scan order)
                torch.mul(dy_t[s:e, bs, :, None, :], p.C[s:e, bs, :, :, None], out=g)  # direct C_t dy_t
                # Reverse loop: dh_t = C_t dy_t + exp(delta_{t+1} A) dh_{t+1}, t+1 in scan order.
                gv, dAv = g.unbind(0), dA.unbind(0)
                if reverse:
                    if carry is not None:
                        gv[0].add_(carry)
                    for i in range(1, n):
                        gv[i].addcmul_(dAv[i - 1], gv[i - 1])
                    carry = dAv[n - 1] * gv[n - 1]
                else:
                    if carry is not None:
                        gv[n - 1].add_(carry)
                    for i in range(n - 2, -1, -1):
                        gv[i].addcmul_(dAv[i + 1], gv[i + 1])
                    carry = dAv[0] * gv[0]
                # Vectorised gradients; the order lets each product overwrite a buffer it no longer needs.
                gB = torch.matmul(p.B[s:e, bs, :, None, :], g).squeeze(-2)  # (T, nb, G, K): sum_n B_n g_n
                q = dA.mul_(g).mul_(hp)  # (T, nb, G, N, K) dL/d(delta*A), in the decay buffer
                # Sums over channels as in-place mul + sum: batched (N x K) @ (K x 1) matvecs are slower.
                if dB is not None:
                    dB[s:e, bs] = g.mul_(p.du[s:e, bs, :, None, :]).sum(-1)
                if dC is not None:
                    dC[s:e, bs] = hs.mul_(dy_t[s:e, bs, :, None, :]).sum(-1)
                dd = torch.mul(q, p.A, out=g).sum(-2)  # (T, nb, G, K)
                ddlt[s:e, bs] = dd.addcmul_(gB, p.u_t[s:e, bs])
                torch.mul(gB, p.dlt[s:e, bs], out=du_t[s:e, bs])
                if needs[2]:
                    dAp += q.mul_(p.dlt[s:e, bs, :, None, :]).sum((0, 1))
            dinit[bs] = 0.0 if carry is None else carry

        du_t = du_t.view(L, batch, dim)
        if D is not None:
            du_t.addcmul_(dy, D.float())
        ddlt = ddlt.view(L, batch, dim)  # (L, B, D)
        if delta_softplus:
            dsp = torch.sigmoid(p.raw).masked_fill_(p.raw > _SOFTPLUS_THRESHOLD, 1.0)
            ddlt.mul_(dsp)
        ddelta_bias = ddlt.sum((0, 1)).to(delta_bias.dtype) if delta_bias is not None and needs[7] else None

        def _bc(grad: Tensor | None, like: Tensor) -> Tensor | None:
            if grad is None:
                return None
            return grad.permute(1, 2, 3, 0).reshape(like.shape).to(like.dtype).contiguous()  # (B, G, N, L)

        return (
            _from_lbd(du_t, u.dtype) if needs[0] else None,
            _from_lbd(ddlt, delta.dtype) if needs[1] else None,
            dAp.transpose(1, 2).reshape(A.shape).to(A.dtype) if needs[2] else None,
            _bc(dB, B),
            _bc(dC, C),
            dD,
            dz,
            ddelta_bias,
            _state_out(dinit).to(initial_state.dtype) if initial_state is not None and needs[8] else None,
            None,
            None,
        )


def dense_delta(delta: Tensor, delta_proj: Tensor | None) -> Tensor:
    """The scan's (batch, dim, L) delta from a low-rank one: ``delta`` (batch, R, L) through Mamba's dt_proj weight
    ``delta_proj`` (dim, R), as the mixer's ``F.linear`` computes it; ``delta`` itself when ``delta_proj`` is None."""
    if delta_proj is None:
        return delta
    return F.linear(delta.transpose(1, 2), delta_proj).transpose(1, 2)


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: Tensor | None = None,
    reverse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan with mamba_ssm ``selective_scan_fn`` semantics, computed in fp32.

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L) or (batch, G, N, L); D, delta_bias: (dim,);
    initial_state: (batch, dim, N), the state before the first scanned position. ``reverse`` scans from
    position L-1 down to 0, so the last state is the one after position 0. Returns out (batch, dim, L) in u's
    dtype and, if ``return_last_state``, the fp32 last state (batch, dim, N); both are differentiable.
    """
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        out, last = _SelectiveScanFn.apply(*tensors, bool(delta_softplus), bool(reverse))
    else:
        p = _Prep(u, delta, A, B, C, delta_bias, delta_softplus)
        y, last, _ = _scan_forward(p, initial_state, reverse, save=False)
        out, last = _finish(p, y, D, z, u.dtype), _state_out(last)
    return (out, last) if return_last_state else out


__all__ = ["dense_delta", "selective_scan_reference"]
