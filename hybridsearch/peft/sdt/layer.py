"""Sparse dimension tuning, SDT (Galim et al., ICML 2025): tune a few channels and states of each SSM.

Per selected layer and scan direction (E channels, N states, dt rank R):

* **Warm-up** (the first ``warmup_steps`` optimizer steps of the run): a full-size zero-initialised delta of
  A_log (E, N), ``warm``, trains. It is *transient*: the ranking signal, not an adapter, so it is neither
  counted nor saved.
* **Selection** (after the last warm-up step, or the run's last step if that comes first): channels ranked by
  ``sum_n warm[d, n]^2``, the top ``kept(E, channel_freeze)`` stay; for each, its states ranked by
  ``warm[d, n]^2``, the top ``kept(N, state_freeze)`` stay (the reference's ranking: the change of A_log only).
  The selection is stored in buffers (``channels_<dir>``, ``states_<dir>``), saved with the adapters.
* **Training**: only the compact ``values`` train: A_log's kept (channel, state) entries (they continue from
  their warm-up change; the other entries return to the base), and the B and C rows of x_proj at the kept
  channels' columns, every state (the reference freezes states in A_log only); those start at zero.

So the adapter's size is known from the ratios before training: per layer and direction
``kc ks [A_log] + N kc [B] + N kc [C]``. After the selection the delta is zero outside the kept entries: those
end bit-identical to the base, in the forward and in ``merge`` (which adds to the kept entries only).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...models.hooks import PeftModule
from .config import SdtConfig, kept


class Warmup(PeftModule):
    """SDT's lifecycle on either layer: ``warm`` trains for ``warmup_steps`` optimizer steps, then ``_select``
    (the layer's own ranking) fixes the kept entries and ``warm`` is zeroed and frozen for good."""

    method = "sdt"
    mergeable = True
    transient = frozenset({"warm"})
    warm: nn.ParameterDict
    warmup_steps: int
    steps: int
    selected: bool

    def _select(self) -> None:
        raise NotImplementedError

    def after_optimizer_step(self, last: bool) -> None:
        if self.selected:
            return
        self.steps += 1
        if self.steps >= self.warmup_steps or last:
            self.end_warmup()

    def warmup_left(self) -> int:
        return 0 if self.selected else self.warmup_steps - self.steps

    @torch.no_grad()
    def end_warmup(self) -> None:
        if not self.selected:
            self._select()
            self._freeze_warm()

    def after_load(self) -> None:
        with torch.no_grad():
            self._freeze_warm()

    def _freeze_warm(self) -> None:
        for w in self.warm.values():
            w.zero_()
            w.requires_grad_(False)
            w.grad = None
        self.selected = True


class SparseDimensions(Warmup):

    def __init__(self, A_log: dict[str, Tensor], dt_rank: int, cfg: SdtConfig) -> None:
        super().__init__()
        some = next(iter(A_log.values()))
        E, N = some.shape
        self.N, self.R, self.targets, self.warmup_steps = N, dt_rank, tuple(cfg.targets), cfg.warmup_steps
        kc, ks = kept(E, cfg.channel_freeze), kept(N, cfg.state_freeze)
        shapes = {"A_log": (kc, ks), "B": (N, kc), "C": (N, kc)}
        self.warm = nn.ParameterDict({d: nn.Parameter(torch.zeros(E, N, device=a.device)) for d, a in A_log.items()})
        self.values = nn.ParameterDict({f"{t}_{d}": nn.Parameter(torch.zeros(shapes[t], device=some.device))
                                        for d in A_log for t in self.targets})
        for d in A_log:
            self.register_buffer(f"channels_{d}", torch.zeros(kc, dtype=torch.long, device=some.device))
            self.register_buffer(f"states_{d}", torch.zeros(kc, ks, dtype=torch.long, device=some.device))
        self.steps, self.selected = 0, False
        self.no_decay: set[str] = set()

    @torch.no_grad()
    def _select(self) -> None:
        for d, w in self.warm.items():
            ch, st = getattr(self, f"channels_{d}"), getattr(self, f"states_{d}")
            score = w.detach().float().square()
            # stable: ties (an untrained warm-up) resolve to the lowest index, the same on every run
            top = torch.argsort(score.sum(1), descending=True, stable=True)[: ch.shape[0]].sort().values
            ch.copy_(top)
            st.copy_(torch.argsort(score[top], dim=1, descending=True, stable=True)[:, : st.shape[1]].sort(1).values)
            if "A_log" in self.targets:
                self.values[f"A_log_{d}"].copy_(w[ch[:, None], st])

    # -- the hook and the merge ------------------------------------------------------------------------------------
    def _parts(self, target: str, direction: str) -> list[tuple[tuple[Tensor, Tensor], str]]:
        """(index of the kept entries in ``target``, key of their values) for each tuned part of ``target``."""
        ch = getattr(self, f"channels_{direction}")
        if target == "A_log" and "A_log" in self.targets:
            return [((ch[:, None], getattr(self, f"states_{direction}")), f"A_log_{direction}")]
        if target != "x_proj.weight":
            return []
        rows = {"B": self.R, "C": self.R + self.N}  # the B rows of x_proj start at R, the C rows at R + N
        return [((torch.arange(rows[t], rows[t] + self.N, device=ch.device)[:, None], ch[None, :]), f"{t}_{direction}")
                for t in ("B", "C") if t in self.targets]

    def delta(self, target: str, base: Tensor, direction: str = "f") -> Tensor | None:
        if direction not in self.warm:
            return None
        if not self.selected:
            return self.warm[direction] if target == "A_log" else None
        parts = self._parts(target, direction)
        if not parts:
            return None
        out = base.new_zeros(base.shape)
        for idx, key in parts:
            out = out.index_put(idx, self.values[key].to(base.dtype))
        return out

    @torch.no_grad()
    def merge(self, host: nn.Module) -> None:
        for d in self.warm:
            if not self.selected:
                host.param("A_log", d).add_(self.warm[d])
                continue
            for target in ("A_log", "x_proj.weight"):
                base = host.param(target, d)
                for idx, key in self._parts(target, d):  # only the kept entries are touched
                    base.index_put_(idx, self.values[key].to(base.dtype), accumulate=True)
