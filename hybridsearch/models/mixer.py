"""Mamba-1 mixer (mamba_ssm ``Mamba``) and its bidirectional Vim "v2" form, in plain PyTorch.

Parameter names follow mamba_ssm / hustvl Vim exactly so real checkpoints load: ``in_proj``, ``conv1d``,
``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj`` and, for the backward scan of Vim, ``conv1d_b``,
``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b``. PEFT methods attach to ``self.peft`` (see hooks.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels import (
    ScanDirection,
    causal_conv1d,
    causal_conv1d_bidirectional,
    linear,
    resolve_backend,
    selective_scan,
    selective_scan_bidirectional,
    split_channels,
)
from .hooks import AffixHook, Part, add_branches, effective, summed

# suffix of each direction's own parameters: forward "" (conv1d), backward "_b" (conv1d_b)
_SUFFIX = {"f": "", "b": "_b"}


class MambaMixer(nn.Module):
    layer = "Mamba1"  # mamba_ssm's ssm_cfg layer name: which form of a method attaches (peft/*/)

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        bidirectional: bool = False,
        layer_idx: int = 0,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.layer_idx = layer_idx
        self.directions = ("f", "b") if bidirectional else ("f",)
        self.scan_backend = "auto"
        # Inner prefix affix tokens enter as an initial scan state + conv context (exact, see _scan_direction);
        # False keeps the explicit-token path (the tests compare the two).
        self.affix_as_state = True
        E = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        for d in self.directions:
            s = _SUFFIX[d]
            setattr(self, f"conv1d{s}", nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1, bias=True))
            setattr(self, f"x_proj{s}", nn.Linear(E, self.dt_rank + 2 * d_state, bias=False))
            dt_proj = nn.Linear(self.dt_rank, E, bias=True)
            self._init_dt(dt_proj, dt_min, dt_max, dt_init_floor)
            setattr(self, f"dt_proj{s}", dt_proj)
            # S4D-real init: A = -(1..N) per channel, stored as log; kept in fp32 (mamba_ssm does the same)
            A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(E, 1)
            self.register_parameter("A_log" if d == "f" else "A_b_log", nn.Parameter(torch.log(A)))
            self.register_parameter("D" if d == "f" else "D_b", nn.Parameter(torch.ones(E)))
        self.out_proj = nn.Linear(E, d_model, bias=False)
        self.peft = nn.ModuleDict()

    def _init_dt(self, dt_proj: nn.Linear, dt_min: float, dt_max: float, floor: float) -> None:
        if dt_proj.weight.is_meta:
            return
        std = self.dt_rank**-0.5
        nn.init.uniform_(dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        with torch.no_grad():  # inverse softplus so that softplus(bias) == dt
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    # -- what PEFT methods attach to (models/hooks.py) ---------------------------------------------
    def peft_part(self, name: str) -> Part | None:
        """The row block or tensor a method names (``"X"``, ``"B"``, ``"dt_bias"``...), None if this mixer has none."""
        E, R, N = self.d_inner, self.dt_rank, self.d_state
        w_in, w_x = "in_proj.weight", "x_proj.weight"
        return {
            "in_proj": Part(w_in), "X": Part(w_in, slice(0, E)), "Z": Part(w_in, slice(E, 2 * E)),
            "x_proj": Part(w_x), "d": Part(w_x, slice(0, R)), "B": Part(w_x, slice(R, R + N)),
            "C": Part(w_x, slice(R + N, R + 2 * N)), "dt_proj": Part("dt_proj.weight"),
            "out_proj": Part("out_proj.weight"),
            "A_log": Part("A_log"), "D": Part("D"), "conv1d.weight": Part("conv1d.weight"),
            "conv1d.bias": Part("conv1d.bias"), "dt_bias": Part("dt_proj.bias"),
        }.get(name)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """One direction's SSM state per sequence: (E, N)."""
        return (self.d_inner, self.d_state)

    # -- per-direction tensors (base + PEFT deltas) ------------------------------------------------
    def param(self, name: str, direction: str) -> Tensor:
        """Base tensor ``name`` (e.g. ``"x_proj.weight"``, ``"A_log"``) of one scan direction."""
        s = _SUFFIX[direction]
        if name == "A_log":
            return self.A_log if direction == "f" else self.A_b_log
        if name == "D":
            return self.D if direction == "f" else self.D_b
        mod, attr = name.split(".")
        return getattr(getattr(self, f"{mod}{s}"), attr)

    def eff(self, name: str, direction: str) -> Tensor:
        return effective(self, name, self.param(name, direction), direction)

    def _linear(self, x: Tensor, w: Tensor) -> Tensor:
        """The projections: ``kernels.linear`` on the cpu backend (faster matmuls on AMD CPUs), else ``F.linear``."""
        return linear(x, w) if resolve_backend(self.scan_backend, x) == "cpu" else F.linear(x, w)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, h: Tensor, affix: AffixHook | None = None) -> Tensor:
        """h: (B, L, d_model) -> (B, L, d_model). ``affix``: this layer's affix tokens (hooks.AffixHook)."""
        if affix is not None and affix.outer:
            h, keep = affix.insert_outer(h)
        w_in = effective(self, "in_proj.weight", self.in_proj.weight)
        xz = add_branches(self, "in_proj", h, self._linear(h, w_in))  # (B, L', 2E)
        # x and z as channels-innermost (B, E, L') views: the fused CPU kernels read them in place and write their
        # gradients into one buffer, which the split's backward returns as xz's (kernels.split).
        x, z = split_channels(xz, [self.d_inner, self.d_inner])
        ys: dict[str, Tensor] = {}
        plain: dict[str, tuple[ScanDirection, Tensor | None]] = {}  # direction -> its scan's inputs, output term
        affixes = {}  # direction -> (inner tokens, prefix tokens)
        for d in self.directions:
            inner = prefix = None
            if affix is not None and not affix.outer:
                if self.affix_as_state and self.scan_backend != "mamba_ssm":
                    prefix = affix.prefix(d)
                if prefix is None:
                    inner = affix.inner(d)
            affixes[d] = (inner, prefix)
        convs: dict[str, Tensor] = {}  # Vim's two directions' convs of x as one call
        if len(affixes) == 2 and all(inner is None and prefix is None for inner, prefix in affixes.values()):
            convs["f"], convs["b"] = causal_conv1d_bidirectional(
                x, *(self.eff(f"conv1d.{p}", d) for d in ("f", "b") for p in ("weight", "bias")),
                backend=self.scan_backend)
        for d, (inner, prefix) in affixes.items():
            if inner is None:  # the backward direction scans and convolves in reverse: nothing is flipped
                plain[d] = self._direction_inputs(x, d, reverse=d == "b", prefix=prefix, u=convs.get(d))
            else:  # explicit tokens go in the direction's scan order, so the backward scan takes a flipped copy
                seq = xz.transpose(1, 2)
                seq, kept = inner(seq if d == "f" else seq.flip(-1))
                E = self.d_inner
                y = self._scan_direction(seq[:, :E], seq[:, E:], d)[..., kept]
                ys[d] = y if d == "f" else y.flip(-1)
        if len(plain) == 2 and all(term is None for _, term in plain.values()):
            # Vim's "if_devide_out" average of the two directions, in one call (fused on the cpu backend)
            y = selective_scan_bidirectional(plain["f"][0], plain["b"][0], z, delta_softplus=True,
                                             backend=self.scan_backend)
        else:
            for d, (inputs, term) in plain.items():
                ys[d] = self._scan(inputs, term, z, reverse=d == "b")
            y = ys["f"] if len(ys) == 1 else (ys["f"] + ys["b"]) / 2  # Vim "if_devide_out"
        y = y.transpose(1, 2)  # (B, L', E)
        if affix is not None and affix.outer:
            y = y[:, keep]
        w_out = effective(self, "out_proj.weight", self.out_proj.weight)
        return add_branches(self, "out_proj", y, self._linear(y, w_out))

    def _scan_direction(self, x: Tensor, z: Tensor, d: str, reverse: bool = False,
                        prefix: Tensor | None = None) -> Tensor:
        """One direction's conv and scan over x, z (B, E, L); returns the gated output (B, E, L)."""
        inputs, term = self._direction_inputs(x, d, reverse, prefix)
        return self._scan(inputs, term, z, reverse)

    def _scan(self, s: ScanDirection, term: Tensor | None, z: Tensor, reverse: bool) -> Tensor:
        """The gated scan output (B, E, L) of one direction's inputs, plus its PEFT output term."""
        y = selective_scan(s.u, s.delta, s.A, s.B, s.C, s.D, z=z, delta_bias=s.delta_bias, delta_softplus=True,
                           initial_state=s.initial_state, reverse=reverse, backend=self.scan_backend,
                           delta_proj=s.delta_proj)
        if term is not None:  # a term of the scan's output before the gate: (C_t . h_t + D u_t + term_t) silu(z_t)
            y = y + (term * F.silu(z.float())).to(y.dtype)
        return y

    def _direction_inputs(self, x: Tensor, d: str, reverse: bool = False, prefix: Tensor | None = None,
                          u: Tensor | None = None) -> tuple[ScanDirection, Tensor | None]:
        """One direction's conv over x (B, E, L) (or ``u``, that conv already done) and the scan inputs from it;
        and the PEFT methods' term of the scan's output (None when none adds one).

        ``reverse`` runs the direction in reverse order (the conv of the flipped sequence, the scan from the
        last position) on the unflipped tensors. ``prefix`` (n, 2E) are prefix tokens shared by the batch,
        handled without putting them in the sequence: their only effect on the real tokens is the scan state
        after them and the conv's context before position 0 (in scan order), both batch independent, so the
        prefix is scanned once with batch 1 and the sequence starts from its last state.
        """
        E, K1, backend = self.d_inner, self.d_conv - 1, self.scan_backend
        L = x.shape[-1]
        D, dt_bias = self.eff("D", d).float(), self.eff("dt_proj.bias", d).float()
        h_init = summed(self, "initial_state", d)  # (E, N): the state before the first token the scan reads
        h0 = None
        if u is not None:
            x = u
        elif prefix is None:
            x = causal_conv1d(x, self.eff("conv1d.weight", d), self.eff("conv1d.bias", d), reverse=reverse,
                              backend=backend)
        else:
            conv_w, conv_b = self.eff("conv1d.weight", d), self.eff("conv1d.bias", d)
            px = prefix.to(x.dtype).t()[None, :E]  # (1, E, n) in scan order; the z half only gates dropped outputs
            x_pre = causal_conv1d(px, conv_w, conv_b, backend=backend)
            ctx = F.pad(px, (K1, 0))[..., px.shape[-1]:]  # the K1 conv inputs before position 0 (zeros if n < K1)
            ctx = ctx.expand(x.shape[0], -1, -1)
            if reverse:  # in scan order the context comes right after the last position
                x = causal_conv1d(_cat_seq(x, ctx.flip(-1)), conv_w, conv_b, reverse=True, backend=backend)[..., :L]
            else:
                x = causal_conv1d(_cat_seq(ctx, x), conv_w, conv_b, backend=backend)[..., K1:]
            pre = self._ssm_inputs(x_pre, d)
            _, h0 = selective_scan(x_pre, pre.delta, pre.A, pre.B, pre.C, delta_bias=dt_bias, delta_softplus=True,
                                   return_last_state=True, initial_state=pre.state(h_init, 1), backend=backend,
                                   delta_proj=pre.delta_proj)
            h0 = h0.expand(x.shape[0], -1, -1)
        s = self._ssm_inputs(x, d)
        if h0 is None:
            h0 = s.state(h_init, x.shape[0])
        term = summed(self, "scan_output", d, _Readout(s.C_base))
        return ScanDirection(x, s.delta, s.A, s.B, s.C, D, dt_bias, h0, s.delta_proj), term

    def _ssm_inputs(self, x: Tensor, d: str) -> _SSMInputs:
        """delta as dt (B, R, L) with dt_proj's weight (E, R), A (E, N), B and C (B, N, L) from the conv output x
        (B, E, L); all but A are transposed views of (B, L, .) tensors, which every scan backend reads (or copies)
        as it needs. The scan forms delta = dt_proj(dt) itself: in the cpu kernel, or ``F.linear`` as before."""
        N, R = self.d_state, self.dt_rank
        x_dbl = self._linear(x.transpose(1, 2), self.eff("x_proj.weight", d))  # (B, L, R + 2N)
        dt, B, C = split_channels(x_dbl, [R, N, N])  # (B, R, L), (B, N, L), (B, N, L)
        A = -torch.exp(self.eff("A_log", d).float())  # (E, N)
        out = _SSMInputs(dt, A, B, C, C, self.eff("dt_proj.weight", d))
        for m in self.peft.values():
            extra = m.extra_states(d, x)
            if extra is not None:
                out.A, out.B, out.C = extra.concat(out.A, out.B, out.C)
                out.extras.append(extra)
        return out


@dataclass
class _SSMInputs:
    delta: Tensor  # (B, R, L): dt, the input of dt_proj
    A: Tensor
    B: Tensor
    C: Tensor
    C_base: Tensor  # (B, N, L): the pretrained states' C, before any extra state columns
    delta_proj: Tensor  # (E, R): dt_proj's weight
    extras: list[Any] = field(default_factory=list)  # the extra_states objects, in the order they were added

    def state(self, h: Tensor | None, batch: int) -> Tensor | None:
        """An (E, N) initial state over the pretrained states as the scan's (batch, E, N + extras) one: the extra
        state columns start at zero."""
        if h is None:
            return None
        for extra in self.extras:
            h = extra.pad_state(h)
        return h.float()[None].expand(batch, -1, -1)


@dataclass
class _Readout:
    """hooks.ScanReadout over the (batch, E, L) output, from the pretrained states' C (batch, N, L)."""

    C: Tensor

    def state(self, h: Tensor) -> Tensor:
        return torch.einsum("bnl,dn->bdl", self.C.float(), h.float())

    def channels(self, y: Tensor) -> Tensor:
        return y.float()[:, None]


def _cat_seq(a: Tensor, b: Tensor) -> Tensor:
    """(B, E, La) and (B, E, Lb) joined along L, channels innermost like the mixer's other sequences."""
    return torch.cat([a.transpose(1, 2), b.transpose(1, 2)], dim=1).transpose(1, 2)
