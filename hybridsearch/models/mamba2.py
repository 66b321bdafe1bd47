"""Mamba-2 language model (mamba_ssm ``Mamba2`` layers in ``MambaLMHeadModel``; transformers' ``Mamba2ForCausalLM``).

One mixer: ``in_proj`` makes z, x, B, C and dt; a depthwise causal conv1d (+ SiLU) runs over x, B and C; the SSD
scan (``kernels/ssd``) runs with one scalar A, dt bias and D per head; a gated RMSNorm (norm(y * silu(z)) per
group, or norm(y) * silu(z) with ``norm_before_gate``) and ``out_proj`` finish. Parameter and state-dict names are
mamba_ssm's and transformers' (``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``, ``norm``, ``out_proj``), so
their checkpoints load unchanged (``mamba2_checkpoint.py`` reads their configs).

Hook points (``hooks.py``), where the Mamba-1 mixer has them, so the PEFT methods can be carried over without
touching this model again: ``self.peft`` on the model and every mixer; ``effective`` on every base tensor the
forward reads (``in_proj.weight``, ``conv1d.weight`` / ``.bias``, ``dt_bias``, ``A_log``, ``D``, ``norm.weight``,
``out_proj.weight``, ``embedding.weight``); ``add_branches`` at ``in_proj``, ``out_proj`` and ``embedding``;
``extend_sequence`` at the model's input; affix tokens (``AffixHook``), ``extra_states`` (extra heads' states,
scanned beside the pretrained ones), ``initial_state`` and ``scan_output`` in the mixer. ``param(name, direction)``,
``directions``, ``peft_part`` and ``state_shape`` as the Mamba-1 mixer. Where each method goes: docs/methods.md
("Mamba-2").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels import causal_conv1d, linear, resolve_backend
from ..kernels.ssd import ssd_scan
from .hooks import AffixHook, Part, add_branches, effective, summed
from .layers import Block, RMSNorm
from .mamba_lm import LMHeadModel

NO_LIMIT = (0.0, math.inf)


@dataclass
class Mamba2Config:
    """A Mamba-2 LM; defaults are mamba_ssm's (``Mamba2`` and ``MambaConfig``)."""

    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50277
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    rmsnorm: bool = True  # the gated RMSNorm; without it y * silu(z)
    norm_before_gate: bool = False
    D_has_hdim: bool = False  # D per channel (d_inner,) instead of per head
    dt_limit: tuple[float, float] = NO_LIMIT
    bias: bool = False  # in_proj / out_proj biases
    conv_bias: bool = True
    tie_embeddings: bool = True
    pad_vocab_size_multiple: int = 16
    eps: float = 1e-5  # every RMSNorm (mamba_ssm: 1e-5; transformers: layer_norm_epsilon)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def padded_vocab(self) -> int:
        m = self.pad_vocab_size_multiple
        return math.ceil(self.vocab_size / m) * m

    def to_dict(self) -> dict:
        return {**asdict(self), "dt_limit": list(self.dt_limit)}  # JSON round trips keep it equal

    def config_json(self, fmt: str) -> dict:
        """This architecture as the ``config.json`` of a mamba_ssm or transformers (``hf``) checkpoint."""
        if fmt == "mamba_ssm":
            ssm = {"layer": "Mamba2", "d_state": self.d_state, "d_conv": self.d_conv, "expand": self.expand,
                   "headdim": self.headdim, "ngroups": self.ngroups, "chunk_size": self.chunk_size,
                   "rmsnorm": self.rmsnorm, "norm_before_gate": self.norm_before_gate, "D_has_hdim": self.D_has_hdim,
                   "bias": self.bias, "conv_bias": self.conv_bias}
            if tuple(self.dt_limit) != NO_LIMIT:
                ssm["dt_limit"] = list(self.dt_limit)
            return {"d_model": self.d_model, "d_intermediate": 0, "n_layer": self.n_layer,
                    "vocab_size": self.vocab_size, "ssm_cfg": ssm, "attn_layer_idx": [], "attn_cfg": {},
                    "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
                    "pad_vocab_size_multiple": self.pad_vocab_size_multiple, "tie_embeddings": self.tie_embeddings}
        if fmt == "hf":
            unsupported = [k for k, v in (("rmsnorm", False), ("norm_before_gate", True), ("D_has_hdim", True))
                           if getattr(self, k) == v]
            if unsupported:
                raise ValueError(f"transformers' Mamba2 cannot express {', '.join(unsupported)}; save it in the "
                                 "mamba_ssm layout")
            lo, hi = self.dt_limit
            return {"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "hidden_size": self.d_model,
                    "num_hidden_layers": self.n_layer, "vocab_size": self.padded_vocab, "state_size": self.d_state,
                    "conv_kernel": self.d_conv, "expand": self.expand, "head_dim": self.headdim,
                    "num_heads": self.nheads, "n_groups": self.ngroups, "chunk_size": self.chunk_size,
                    "use_bias": self.bias, "use_conv_bias": self.conv_bias, "layer_norm_epsilon": self.eps,
                    "hidden_act": "silu", "residual_in_fp32": True, "tie_word_embeddings": self.tie_embeddings,
                    # JSON has no infinity: transformers 5 writes it so, and reads it back
                    "time_step_limit": [lo, hi if math.isfinite(hi) else {"__float__": "Infinity"}]}
        raise ValueError(f"unknown Mamba checkpoint format {fmt!r}; allowed: mamba_ssm, hf")


class RMSNormGated(nn.Module):
    """mamba_ssm's gated RMSNorm (``layernorm_gated.RMSNorm``) = transformers' ``MambaRMSNormGated``: an RMSNorm
    per group of ``group_size`` channels, in fp32, gated by silu(z) before the norm (default) or after it."""

    def __init__(self, d: int, group_size: int, eps: float = 1e-5, norm_before_gate: bool = False) -> None:
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: Tensor, z: Tensor, weight: Tensor | None = None) -> Tensor:
        """y, z (..., d) -> (..., d) in y's dtype; ``weight`` replaces ``self.weight`` (its PEFT-effective form)."""
        w = self.weight if weight is None else weight
        yf, gate = y.float(), F.silu(z.float())
        if not self.norm_before_gate:
            yf = yf * gate
        g = yf.unflatten(-1, (-1, self.group_size))  # (..., groups, group_size)
        out = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2) * w.float()
        if self.norm_before_gate:
            out = out * gate
        return out.to(y.dtype)


class Mamba2(nn.Module):
    """The Mamba-2 mixer: (B, L, d_model) -> (B, L, d_model)."""

    layer = "Mamba2"  # mamba_ssm's ssm_cfg layer name: which form of a method attaches (peft/*/)

    def __init__(self, cfg: Mamba2Config, layer_idx: int = 0, dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, A_init_range: tuple[float, float] = (1.0, 16.0)) -> None:
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        self.d_model, self.d_state, self.d_conv = cfg.d_model, cfg.d_state, cfg.d_conv
        self.d_inner, self.headdim, self.nheads, self.ngroups = cfg.d_inner, cfg.headdim, cfg.nheads, cfg.ngroups
        self.directions = ("f",)  # one scan direction, as the Mamba-1 LM mixer (peft/hosts.per_direction)
        self.scan_backend = "auto"
        self.affix_as_state = True  # prefix affix tokens enter as an initial state + conv context (exact; tests)
        E, H, GN = self.d_inner, self.nheads, cfg.ngroups * cfg.d_state
        self.conv_dim = E + 2 * GN
        self.in_proj = nn.Linear(cfg.d_model, 2 * E + 2 * GN + H, bias=cfg.bias)  # [z, x, B, C, dt]
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim,
                                padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H))  # kept in fp32, as mamba_ssm
        self.D = nn.Parameter(torch.ones(E if cfg.D_has_hdim else H))
        if cfg.rmsnorm:
            self.norm = RMSNormGated(E, E // cfg.ngroups, cfg.eps, cfg.norm_before_gate)
        self.out_proj = nn.Linear(E, cfg.d_model, bias=cfg.bias)
        self.peft = nn.ModuleDict()
        if not self.A_log.is_meta:
            dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            with torch.no_grad():  # inverse softplus, so that softplus(dt_bias) == dt
                self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
                self.A_log.copy_(torch.empty(H).uniform_(*A_init_range).log())

    # -- what PEFT methods attach to (models/hooks.py) ----------------------------------------------------------------
    def peft_part(self, name: str) -> Part | None:
        """The row block or tensor a method names, None where Mamba-2 has none (``dt_proj``). in_proj's rows are
        [z, x, B, C, dt]; ``x_proj`` is the B, C and dt rows, what Mamba-1's x_proj makes (docs/methods.md)."""
        E, GN, w_in = self.d_inner, self.ngroups * self.d_state, "in_proj.weight"
        parts = {
            "in_proj": Part(w_in), "Z": Part(w_in, slice(0, E)), "X": Part(w_in, slice(E, 2 * E)),
            "B": Part(w_in, slice(2 * E, 2 * E + GN)), "C": Part(w_in, slice(2 * E + GN, 2 * E + 2 * GN)),
            "d": Part(w_in, slice(2 * E + 2 * GN, 2 * E + 2 * GN + self.nheads)),
            "x_proj": Part(w_in, slice(2 * E, 2 * E + 2 * GN + self.nheads)), "out_proj": Part("out_proj.weight"),
            "A_log": Part("A_log"), "D": Part("D"), "conv1d.weight": Part("conv1d.weight"), "dt_bias": Part("dt_bias"),
        }
        if self.conv1d.bias is not None:
            parts["conv1d.bias"] = Part("conv1d.bias")
        if self.cfg.rmsnorm:
            parts["norm"] = Part("norm.weight")
        return parts.get(name)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """The SSM state per sequence: (heads, headdim, N)."""
        return (self.nheads, self.headdim, self.d_state)

    # -- base tensors (+ PEFT deltas), by the names the hooks use ---------------------------------------------------
    def param(self, name: str, direction: str = "f") -> Tensor:
        """Base tensor ``name`` (``"in_proj.weight"``, ``"A_log"``, ``"dt_bias"``...); one direction only."""
        if direction != "f":
            raise KeyError(f"the Mamba-2 mixer scans one direction; got {direction!r}")
        owner, _, attr = name.rpartition(".")
        return getattr(getattr(self, owner) if owner else self, attr)

    def eff(self, name: str) -> Tensor | None:
        owner, _, attr = name.rpartition(".")
        base = getattr(getattr(self, owner) if owner else self, attr)
        return None if base is None else effective(self, name, base)

    def _linear(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        """The projections: ``kernels.linear`` on the cpu backend (faster matmuls on AMD CPUs), else ``F.linear``."""
        return linear(x, w, b) if resolve_backend(self.scan_backend, x) == "cpu" else F.linear(x, w, b)

    def forward(self, h: Tensor, affix: AffixHook | None = None) -> Tensor:
        """h (B, L, d_model) -> (B, L, d_model). ``affix``: this layer's affix tokens (hooks.AffixHook): outer ones
        enter in_proj's input, inner ones its output (z, x, B, C, dt); their outputs are dropped."""
        keep = prefix = None
        if affix is not None and affix.outer:
            h, keep = affix.insert_outer(h)
        zxbcdt = add_branches(self, "in_proj", h, self._linear(h, self.eff("in_proj.weight"), self.in_proj.bias))
        if affix is not None and not affix.outer:
            prefix = affix.prefix("f") if self.affix_as_state else None
            if prefix is None:  # explicit tokens in the sequence
                seq, keep = affix.inner("f")(zxbcdt.transpose(1, 2))
                zxbcdt = seq.transpose(1, 2)
        z, xBC, dt = zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        y = self._ssm(xBC, dt, prefix)  # (B, L', E)
        if self.cfg.rmsnorm:
            y = self.norm(y, z, self.eff("norm.weight"))
        else:
            y = y * F.silu(z)
        if keep is not None:
            y = y[:, keep]
        return add_branches(self, "out_proj", y, self._linear(y, self.eff("out_proj.weight"), self.out_proj.bias))

    def _conv(self, xBC: Tensor) -> Tensor:
        # channels-innermost (B, E + 2GN, L) view in and out: the fused CPU conv reads and writes it in place
        return causal_conv1d(xBC.transpose(1, 2), self.eff("conv1d.weight"), self.eff("conv1d.bias"),
                             backend=self.scan_backend).transpose(1, 2)

    def _ssm(self, xBC: Tensor, dt: Tensor, prefix: Tensor | None) -> Tensor:
        """Conv and scans of xBC (B, L, E + 2GN), dt (B, L, H) -> y (B, L, E) before the gated norm.

        ``prefix`` (n, d_in_proj): inner prefix affix tokens shared by the batch, entered without putting them in
        the sequence (as the Mamba-1 mixer): their only effect on the real tokens is the scan states after them
        and the conv's context before position 0, both batch independent, so they are scanned once with batch 1.
        """
        K1 = self.d_conv - 1
        h_init = summed(self, "initial_state", "f")  # (H, P, N): the state before the first token scanned
        starts = None
        if prefix is None:
            xBC = self._conv(xBC)
        else:
            _, p_xBC, p_dt = prefix.to(xBC.dtype)[None].split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
            ctx = F.pad(p_xBC, (0, 0, K1, 0))[:, p_xBC.shape[1]:]  # the K1 conv inputs before position 0
            xBC = self._conv(torch.cat([ctx.expand(xBC.shape[0], -1, -1), xBC], dim=1))[:, K1:]
            _, finals = self._scans(self._conv(p_xBC), p_dt, h_init, None)
            starts = [f.expand(xBC.shape[0], *f.shape[1:]) for f in finals]
        return self._scans(xBC, dt, h_init, starts)[0]

    def _scans(self, xBC: Tensor, dt: Tensor, h_init: Tensor | None, starts: list[Tensor] | None
               ) -> tuple[Tensor, list[Tensor]]:
        """The pretrained states' SSD scan and, beside it, one per ``extra_states`` (Additional-scan: own per-head
        A, own B and C, no D, from zero) on the conv output xBC (B, L, E + 2GN). ``starts``: each scan's initial
        state (the prefix's final ones), else ``h_init`` for the pretrained states. -> (y (B, L, E) with every
        ``scan_output`` term, the final states in the same order)."""
        E, H, P, G, N = self.d_inner, self.nheads, self.headdim, self.ngroups, self.d_state
        batch = xBC.shape[0]
        x, B, C = xBC.split([E, G * N, G * N], dim=-1)
        D = self.eff("D")
        scans = [(-torch.exp(self.eff("A_log").float()), B.unflatten(-1, (G, N)), C.unflatten(-1, (G, N)),
                  D.view(H, P) if self.cfg.D_has_hdim else D)]
        for m in self.peft.values():
            extra = m.extra_states("f", x)
            if extra is not None:
                scans.append((extra.A, extra.B, extra.C, None))
        y, finals = 0, []
        for i, (A, Bs, Cs, Ds) in enumerate(scans):
            h0 = starts[i] if starts is not None else (h_init.float()[None].expand(batch, -1, -1, -1)
                                                      if i == 0 and h_init is not None else None)
            yi, hi = ssd_scan(x.unflatten(-1, (H, P)), dt, A, Bs.to(x.dtype), Cs.to(x.dtype), Ds,
                              dt_bias=self.eff("dt_bias"), dt_limit=self.cfg.dt_limit, chunk_size=self.cfg.chunk_size,
                              initial_state=h0, return_final_state=True, backend=self.scan_backend)
            y, finals = y + yi.flatten(2), [*finals, hi]
        term = summed(self, "scan_output", "f", _Readout(C.unflatten(-1, (G, N)), H))
        if term is not None:
            y = y + term.to(y.dtype)
        return y, finals


@dataclass
class _Readout:
    """hooks.ScanReadout over the (B, L, E) output from the pretrained states' C (B, L, G, N), head h reading group
    h // (H / G)."""

    C: Tensor
    nheads: int

    def state(self, h: Tensor) -> Tensor:
        C = self.C.float().repeat_interleave(self.nheads // self.C.shape[2], dim=2)  # (B, L, H, N)
        return torch.einsum("blhn,hpn->blhp", C, h.float()).flatten(2)

    def channels(self, y: Tensor) -> Tensor:
        return y.float()


class Mamba2Backbone(nn.Module):
    def __init__(self, cfg: Mamba2Config) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.padded_vocab, cfg.d_model)
        self.layers = nn.ModuleList(Block(Mamba2(cfg, layer_idx=i), cfg.d_model, 0.0, cfg.eps)  # type: ignore[arg-type]
                                    for i in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.eps)


class Mamba2LM(LMHeadModel):
    """token ids (B, L) -> logits (B, L, padded vocab); mamba_ssm's ``MambaLMHeadModel`` with Mamba-2 layers."""

    def __init__(self, cfg: Mamba2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Mamba2Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight
        self.peft = nn.ModuleDict()
        self._init_weights(cfg.n_layer)


__all__ = ["NO_LIMIT", "Mamba2", "Mamba2Config", "Mamba2LM", "RMSNormGated"]
