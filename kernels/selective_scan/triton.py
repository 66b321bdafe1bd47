"""Fused Triton backend of the selective scan (forward and backward kernels, deterministic gradients).

Design (after the design notes shared/docs/kernels.md, section 7):

* Grid (groups * channel_blocks, batch): one program owns BLOCK_D channels of one group of one sequence and
  keeps the state tile [BLOCK_D, NPAD] in fp32 registers while it walks L sequentially (the recurrence with
  the fewest instructions per element). N is padded to the next power of two with masks: padded columns get
  A = B = C = 0, so their state stays 0 and they contribute nothing.
* Everything per element is fused: delta + bias, softplus, exp2 with A * log2(e), the D skip and the z gate.
  ``reverse`` only changes the position index of step k (L-1-k), nothing is flipped.
* Forward saves the state entering every CHUNK steps (batch, dim, n_chunks, NPAD) fp32. The backward walks
  the chunks last to first: it recomputes the chunk's states from that checkpoint into a per-program scratch
  slab (CHUNK+1 tiles, small enough to stay in L2), then runs the reverse recurrence over the chunk. The
  pre-gate output y + D u needed for dz is recomputed from those states, so ``out`` is never saved.
* No atomics: dB/dC are reduced over the program's channels in registers and written as per-channel-block
  partials (batch, group, block, L, NPAD); dA, dD and d(delta_bias) as per-sequence partials. torch sums the
  partials afterwards in a fixed order, so gradients are bitwise deterministic.
* Under ``TRITON_INTERPRET=1`` (set before triton is imported) the kernels run on CPU tensors, with small
  blocks so tests cover several channel blocks and chunks.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _config(K: int, npad: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_D, CHUNK, num_warps) for K channels per group and a padded state size npad."""
    if device.type != "cuda":
        # Interpreter: tiny tiles so the tests exercise several channel blocks, masking and chunk boundaries.
        return min(8, triton.next_power_of_2(K)), 4, 1
    block_d = max(16, min(32, 512 // npad))  # the decode kernel's [32, 16] tile; shrink it for large N
    block_d = min(block_d, triton.next_power_of_2(K))
    block_d = int(os.environ.get("HYBRIDSEARCH_SCAN_BLOCK_D", block_d))
    chunk = int(os.environ.get("HYBRIDSEARCH_SCAN_CHUNK", 32))
    num_warps = 4 if block_d * npad >= 512 else 2
    return block_d, chunk, num_warps


@triton.jit
def _softplus(x):
    # torch semantics (threshold 20); exp(x) alone below -15 avoids log(1 + tiny) rounding to 0.
    return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))


@triton.jit
def _pos(k, L, REVERSE: tl.constexpr):
    """Sequence position of scan step k: the reverse direction is read by index, nothing is flipped."""
    t = k
    if REVERSE:
        t = L - 1 - k
    return t


@triton.jit
def _step_inputs(u_ptr, delta_ptr, B_ptr, row, bc, t, dmask, nmask, bias, HAS_BIAS: tl.constexpr):
    """What the state update of position t reads, in fp32: u, delta (+ bias, before softplus) and the B row."""
    u = tl.load(u_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
    raw = tl.load(delta_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += bias
    Bt = tl.load(B_ptr + bc + t, mask=nmask, other=0.0).to(tl.float32)
    return u, raw, Bt


@triton.jit
def _fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, last_ptr, ckpt_ptr,
    dim, L, K, G, N, nblk, nchunks,
    BLOCK_D: tl.constexpr, NPAD: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g = pid // nblk
    blk = pid % nblk
    kk = blk * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = kk < K
    d = g * K + kk  # channel index
    n = tl.arange(0, NPAD)
    nmask = n < N
    m2 = dmask[:, None] & nmask[None, :]

    row = (b * dim + d) * L  # (batch, dim, L) rows of this program's channels
    bc = (b * G + g) * N * L + n * L  # (batch, G, N, L) rows of this group
    A2 = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=m2, other=0.0) * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)  # read only when HAS_BIAS; defined for _step_inputs
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0)
    st = (b * dim + d[:, None]) * N + n[None, :]  # (batch, dim, N) state offsets
    if HAS_H0:
        h = tl.load(h0_ptr + st, mask=m2, other=0.0)
    else:
        h = tl.zeros([BLOCK_D, NPAD], dtype=tl.float32)
    ck = (b * dim + d[:, None]) * nchunks * NPAD + n[None, :]

    for c in range(nchunks):
        if SAVE:
            tl.store(ckpt_ptr + ck + c * NPAD, h, mask=dmask[:, None])
        s0 = c * CHUNK
        cnt = tl.minimum(CHUNK, L - s0)
        for i in range(cnt):
            t = _pos(s0 + i, L, REVERSE)
            u, dt, Bt = _step_inputs(u_ptr, delta_ptr, B_ptr, row, bc, t, dmask, nmask, bias, HAS_BIAS)
            if SOFTPLUS:
                dt = _softplus(dt)
            Ct = tl.load(C_ptr + bc + t, mask=nmask, other=0.0).to(tl.float32)
            h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], axis=1)
            if HAS_D:
                y += Dv * u
            if HAS_Z:
                zt = tl.load(z_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
                y = y * zt / (1.0 + tl.exp(-zt))
            tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty), mask=dmask)
    tl.store(last_ptr + st, h, mask=m2)


@triton.jit
def _bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr, ckpt_ptr, scr_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dBp_ptr, dCp_ptr, dAp_ptr, dDp_ptr, dbiasp_ptr, dh0_ptr,
    dim, L, K, G, N, nblk, nchunks,
    BLOCK_D: tl.constexpr, NPAD: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, WRITE_DH0: tl.constexpr, REVERSE: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g = pid // nblk
    blk = pid % nblk
    kk = blk * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = kk < K
    d = g * K + kk
    n = tl.arange(0, NPAD)
    nmask = n < N
    m2 = dmask[:, None] & nmask[None, :]
    prog = b * (G * nblk) + pid  # linear program id: scratch slab and dB/dC partial rows

    row = (b * dim + d) * L
    bc = (b * G + g) * N * L + n * L
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=m2, other=0.0)
    A2 = A * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)  # read only when HAS_BIAS; defined for _step_inputs
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0)
    st = (b * dim + d[:, None]) * N + n[None, :]
    ck = (b * dim + d[:, None]) * nchunks * NPAD + n[None, :]
    tile = tl.arange(0, BLOCK_D)[:, None] * NPAD + n[None, :]
    scr = scr_ptr + prog * (CHUNK + 1) * BLOCK_D * NPAD + tile  # slot s at scr + s * BLOCK_D * NPAD
    part = prog * L * NPAD + n  # dB/dC partial row of this program, (.., L, NPAD)

    # carry = dL/dh_{t} flowing in from the later scan step: exp(delta_{t+1} A) * dh_{t+1} (+ dlast at the end).
    if HAS_DLAST:
        carry = tl.load(dlast_ptr + st, mask=m2, other=0.0)
    else:
        carry = tl.zeros([BLOCK_D, NPAD], dtype=tl.float32)
    dA_acc = tl.zeros([BLOCK_D, NPAD], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)

    for cc in range(nchunks):
        c = nchunks - 1 - cc
        s0 = c * CHUNK
        cnt = tl.minimum(CHUNK, L - s0)
        # 1) recompute the chunk's states from its checkpoint: slot 0 = entry state, slot i+1 = h after step i.
        h = tl.load(ckpt_ptr + ck + c * NPAD, mask=dmask[:, None], other=0.0)
        tl.store(scr, h)
        for i in range(cnt):
            t = _pos(s0 + i, L, REVERSE)
            u, dt, Bt = _step_inputs(u_ptr, delta_ptr, B_ptr, row, bc, t, dmask, nmask, bias, HAS_BIAS)
            if SOFTPLUS:
                dt = _softplus(dt)
            h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt[None, :]
            tl.store(scr + (i + 1) * BLOCK_D * NPAD, h)
        tl.debug_barrier()  # the slab is re-read below by whichever thread owns each element
        # 2) reverse recurrence over the chunk; h holds h_t, hp = h_{t-1} comes from the slab.
        for j in range(cnt):
            i = cnt - 1 - j
            t = _pos(s0 + i, L, REVERSE)
            hp = tl.load(scr + i * BLOCK_D * NPAD)
            u, raw, Bt = _step_inputs(u_ptr, delta_ptr, B_ptr, row, bc, t, dmask, nmask, bias, HAS_BIAS)
            if SOFTPLUS:
                dt = _softplus(raw)
                dsp = tl.where(raw > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-raw)))
            else:
                dt = raw
            Ct = tl.load(C_ptr + bc + t, mask=nmask, other=0.0).to(tl.float32)
            dy = tl.load(dout_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
            if HAS_Z:
                zt = tl.load(z_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
                sz = 1.0 / (1.0 + tl.exp(-zt))
                y = tl.sum(h * Ct[None, :], axis=1)  # pre-gate output, recomputed instead of saved
                if HAS_D:
                    y += Dv * u
                dz = dy * y * sz * (1.0 + zt * (1.0 - sz))
                tl.store(dz_ptr + row + t, dz.to(dz_ptr.dtype.element_ty), mask=dmask)
                dy = dy * zt * sz
            gr = carry + dy[:, None] * Ct[None, :]  # dL/dh_t
            a = tl.exp2(dt[:, None] * A2)
            tl.store(dCp_ptr + part + t * NPAD, tl.sum(h * dy[:, None], axis=0))
            tl.store(dBp_ptr + part + t * NPAD, tl.sum(gr * (dt * u)[:, None], axis=0))
            gB = tl.sum(gr * Bt[None, :], axis=1)
            q = gr * a * hp  # dL/d(delta * A)
            ddt = tl.sum(q * A, axis=1) + gB * u
            dA_acc += q * dt[:, None]
            du = gB * dt
            if HAS_D:
                du += Dv * dy
                dD_acc += dy * u
            if SOFTPLUS:
                ddt = ddt * dsp
            dbias_acc += ddt
            tl.store(du_ptr + row + t, du.to(du_ptr.dtype.element_ty), mask=dmask)
            tl.store(ddelta_ptr + row + t, ddt.to(ddelta_ptr.dtype.element_ty), mask=dmask)
            carry = a * gr
            h = hp
        tl.debug_barrier()  # the next chunk overwrites the slab
    if WRITE_DH0:
        tl.store(dh0_ptr + st, carry, mask=m2)
    tl.store(dAp_ptr + (b * dim + d[:, None]) * NPAD + n[None, :], dA_acc, mask=dmask[:, None])
    if HAS_D:
        tl.store(dDp_ptr + b * dim + d, dD_acc, mask=dmask)
    if HAS_BIAS:
        tl.store(dbiasp_ptr + b * dim + d, dbias_acc, mask=dmask)


def _prep(u: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor, int, int, int]:
    """Validate shapes; return contiguous 4-D B, C and (G, K, N)."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, L); got {tuple(u.shape)}")
    batch, dim, L = u.shape
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    if B.dim() != 4 or C.shape != B.shape or B.shape[0] != batch or B.shape[3] != L:
        raise ValueError(f"B and C must both be (batch, N, L) or (batch, G, N, L); got {tuple(B.shape)}, "
                         f"{tuple(C.shape)}")
    G, N = B.shape[1], B.shape[2]
    if dim % G or tuple(A.shape) != (dim, N):
        raise ValueError(f"A must be (dim, N) = ({dim}, {N}) and dim divisible by the {G} groups")
    if A.is_complex():
        raise ValueError("the triton selective scan supports only real A")
    return B.contiguous(), C.contiguous(), G, dim // G, N


def _check_device(u: Tensor) -> None:
    if not u.is_cuda and not _interpreting():
        raise RuntimeError("the triton selective scan needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tests)")


def _f32(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.detach().float().contiguous()


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse):
        _check_device(u)
        B4, C4, G, K, N = _prep(u, A, B, C)
        batch, dim, L = u.shape
        u_, delta_ = u.contiguous(), delta.contiguous()
        z_ = None if z is None else z.contiguous()
        A_, D_, bias_, h0 = _f32(A), _f32(D), _f32(delta_bias), _f32(initial_state)
        npad = triton.next_power_of_2(N)
        block_d, chunk, warps = _config(K, npad, u.device)
        nblk, nchunks = triton.cdiv(K, block_d), max(1, triton.cdiv(L, chunk))
        save = any(ctx.needs_input_grad)
        out = torch.empty((batch, dim, L), dtype=u.dtype, device=u.device)
        last = torch.empty((batch, dim, N), dtype=torch.float32, device=u.device)
        ckpt = torch.empty((batch, dim, nchunks, npad) if save else (1,), dtype=torch.float32, device=u.device)
        dummy = A_
        _fwd_kernel[(G * nblk, batch)](
            u_, delta_, A_, B4, C4, dummy if D_ is None else D_, dummy if z_ is None else z_,
            dummy if bias_ is None else bias_, dummy if h0 is None else h0, out, last, ckpt,
            dim, L, K, G, N, nblk, nchunks,
            BLOCK_D=block_d, NPAD=npad, CHUNK=chunk, HAS_D=D_ is not None, HAS_Z=z_ is not None,
            HAS_BIAS=bias_ is not None, SOFTPLUS=bool(delta_softplus), HAS_H0=h0 is not None,
            REVERSE=bool(reverse), SAVE=save, num_warps=warps,
        )
        ctx.set_materialize_grads(False)
        if save:
            ctx.cfg = (G, K, N, npad, block_d, chunk, warps, nblk, nchunks, bool(delta_softplus), bool(reverse))
            ctx.b_shape, ctx.has_init = B.shape, initial_state is not None
            ctx.save_for_backward(u_, delta_, A_, B4, C4, D_, z_, bias_, ckpt)
        return out, last

    @staticmethod
    @once_differentiable  # the backward kernel is not itself differentiable: fail loudly on double grad
    def backward(ctx, dout, dlast):
        u, delta, A, B4, C4, D, z, bias, ckpt = ctx.saved_tensors
        G, K, N, npad, block_d, chunk, warps, nblk, nchunks, softplus, reverse = ctx.cfg
        needs = ctx.needs_input_grad  # u, delta, A, B, C, D, z, delta_bias, initial_state
        batch, dim, L = u.shape
        dev = u.device
        dout = torch.zeros_like(u) if dout is None else dout.contiguous()
        dlast = None if dlast is None else dlast.float().contiguous()
        f32 = torch.float32
        du = torch.empty_like(u)
        ddelta = torch.empty_like(delta)
        dz = None if z is None else torch.empty_like(z)
        nprog = batch * G * nblk
        scratch = torch.empty((nprog, chunk + 1, block_d, npad), dtype=f32, device=dev)
        dBp = torch.empty((batch, G, nblk, L, npad), dtype=f32, device=dev)
        dCp = torch.empty((batch, G, nblk, L, npad), dtype=f32, device=dev)
        dAp = torch.empty((batch, dim, npad), dtype=f32, device=dev)
        dDp = None if D is None else torch.empty((batch, dim), dtype=f32, device=dev)
        dbp = None if bias is None else torch.empty((batch, dim), dtype=f32, device=dev)
        write_dh0 = ctx.has_init and needs[8]
        dh0 = torch.empty((batch, dim, N), dtype=f32, device=dev) if write_dh0 else None
        dummy = A
        _bwd_kernel[(G * nblk, batch)](
            u, delta, A, B4, C4, dummy if D is None else D, dummy if z is None else z,
            dummy if bias is None else bias, dout, dummy if dlast is None else dlast, ckpt, scratch,
            du, ddelta, dummy if dz is None else dz, dBp, dCp, dAp, dummy if dDp is None else dDp,
            dummy if dbp is None else dbp, dummy if dh0 is None else dh0,
            dim, L, K, G, N, nblk, nchunks,
            BLOCK_D=block_d, NPAD=npad, CHUNK=chunk, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=bias is not None, SOFTPLUS=softplus, HAS_DLAST=dlast is not None, WRITE_DH0=write_dh0,
            REVERSE=reverse, num_warps=warps,
        )

        def _bc(part: Tensor, like: Tensor) -> Tensor:
            # fixed-order sum over channel blocks, then (batch, G, L, N) -> the caller's (batch, [G,] N, L)
            full = part.sum(2) if nblk > 1 else part[:, :, 0]
            return full[..., :N].transpose(2, 3).reshape(ctx.b_shape).to(like.dtype)

        return (
            du if needs[0] else None,
            ddelta if needs[1] else None,
            dAp.sum(0)[:, :N] if needs[2] else None,
            _bc(dBp, B4) if needs[3] else None,
            _bc(dCp, C4) if needs[4] else None,
            dDp.sum(0) if dDp is not None and needs[5] else None,
            dz if needs[6] else None,
            dbp.sum(0) if dbp is not None and needs[7] else None,
            dh0 if write_dh0 else None,
            None,
            None,
        )


def selective_scan_triton(
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
    """Selective scan with mamba_ssm ``selective_scan_fn`` semantics on the fused Triton kernels.

    Same arguments and results as ``selective_scan_reference``: out (batch, dim, L) in u's dtype and, with
    ``return_last_state``, the fp32 last state (batch, dim, N); both differentiable, and so is
    ``initial_state``. Needs CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
    """
    out, last = _SelectiveScanTriton.apply(
        u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus), bool(reverse)
    )
    return (out, last) if return_last_state else out


__all__ = ["selective_scan_triton"]
