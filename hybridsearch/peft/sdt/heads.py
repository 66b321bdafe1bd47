"""Sparse dimension tuning on Mamba-2: a few heads of A_log and a few states of B and C (the mapping of
docs/methods.md, "Mamba-2").

Mamba-2's A is one scalar per head, shared by the head's P channels and all N states, and B, C (N per group) come
from rows of in_proj. So per selected layer (H heads, G groups, N states, d_model columns):

* **Warm-up**: zero-initialised deltas of A_log (H,) and, for each of B / C in ``targets``, of its G N rows of
  in_proj (transient: the ranking signal, neither counted nor saved).
* **Selection**: heads ranked by the change of their A_log, the top ``kept(H, channel_freeze)`` stay; A has no
  states to freeze, so ``state_freeze`` moves to B and C: in each group its N rows ranked by the change of the B
  (and C) rows summed over the columns, the top ``kept(N, state_freeze)`` stay (B and C ranked together, so one
  state selection serves both). Stored in buffers ``heads_f`` and ``states_f``.
* **Training**: the kept heads' A_log entries (continuing from their warm-up change) and the kept rows of B / C,
  every column of in_proj (starting at zero).

Count, known from the ratios: ``kh`` (A_log) + ``G ks d_model`` per B / C target, per layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import SdtConfig, kept
from .layer import Warmup


class SparseHeads(Warmup):

    def __init__(self, mixer: nn.Module, cfg: SdtConfig) -> None:
        super().__init__()
        H, G, N, D = mixer.nheads, mixer.ngroups, mixer.d_state, mixer.d_model
        dev = mixer.A_log.device
        self.targets, self.warmup_steps, self.G, self.N = tuple(cfg.targets), cfg.warmup_steps, G, N
        self.rows = {t: mixer.peft_part(t).rows.start for t in ("B", "C")}  # first in_proj row of B / C
        kh, ks = kept(H, cfg.channel_freeze), kept(N, cfg.state_freeze)
        rows = [t for t in ("B", "C") if t in self.targets]
        self.warm = nn.ParameterDict({"A_log": nn.Parameter(torch.zeros(H, device=dev)),
                                      **{t: nn.Parameter(torch.zeros(G * N, D, device=dev)) for t in rows}})
        shapes = {"A_log": (kh,), "B": (G, ks, D), "C": (G, ks, D)}
        self.values = nn.ParameterDict({f"{t}_f": nn.Parameter(torch.zeros(shapes[t], device=dev))
                                        for t in self.targets})
        self.register_buffer("heads_f", torch.zeros(kh, dtype=torch.long, device=dev))
        self.register_buffer("states_f", torch.zeros(G, ks, dtype=torch.long, device=dev))
        self.steps, self.selected = 0, False
        self.no_decay: set[str] = set()

    @torch.no_grad()
    def _select(self) -> None:
        a = self.warm["A_log"].detach().float().square()
        # stable: ties (an untrained warm-up) resolve to the lowest index, the same on every run
        self.heads_f.copy_(torch.argsort(a, descending=True, stable=True)[: self.heads_f.shape[0]].sort().values)
        score = sum((self.warm[t].detach().float().square().sum(1) for t in ("B", "C") if t in self.warm),
                    torch.zeros(self.G * self.N, device=a.device)).view(self.G, self.N)
        ks = self.states_f.shape[1]
        self.states_f.copy_(torch.argsort(score, dim=1, descending=True, stable=True)[:, :ks].sort(1).values)
        if "A_log" in self.targets:
            self.values["A_log_f"].copy_(self.warm["A_log"][self.heads_f])

    # -- the hook and the merge ------------------------------------------------------------------------------------
    def _row_index(self, t: str) -> Tensor:
        """(G, ks) in_proj rows of the kept states of B or C."""
        groups = torch.arange(self.G, device=self.states_f.device)[:, None] * self.N
        return self.rows[t] + groups + self.states_f

    def _parts(self, target: str) -> list[tuple[tuple[Tensor, ...], str]]:
        if target == "A_log" and "A_log" in self.targets:
            return [((self.heads_f,), "A_log_f")]
        if target != "in_proj.weight":
            return []
        return [((self._row_index(t),), f"{t}_f") for t in ("B", "C") if t in self.targets]

    def delta(self, target: str, base: Tensor, direction: str = "f") -> Tensor | None:
        if direction != "f":
            return None
        if not self.selected:
            if target == "A_log":
                return self.warm["A_log"]
            if target != "in_proj.weight" or len(self.warm) == 1:
                return None
            out = base.new_zeros(base.shape)
            for t in ("B", "C"):
                if t in self.warm:
                    out = out.index_put((torch.arange(self.G * self.N, device=base.device) + self.rows[t],),
                                        self.warm[t].to(base.dtype))
            return out
        parts = self._parts(target)
        if not parts:
            return None
        out = base.new_zeros(base.shape)
        for idx, key in parts:
            out = out.index_put(idx, self.values[key].to(base.dtype))
        return out

    @torch.no_grad()
    def merge(self, host: nn.Module) -> None:
        if not self.selected:
            for t, w in self.warm.items():
                target = "A_log" if t == "A_log" else "in_proj.weight"
                rows = slice(None) if t == "A_log" else slice(self.rows[t], self.rows[t] + self.G * self.N)
                host.param(target)[rows] += w.to(host.param(target).dtype)
            return
        for target in ("A_log", "in_proj.weight"):
            base = host.param(target)
            for idx, key in self._parts(target):  # only the kept entries are touched
                base.index_put_(idx, self.values[key].to(base.dtype), accumulate=True)
