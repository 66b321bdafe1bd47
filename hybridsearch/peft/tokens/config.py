"""Configs of the token methods: ``PromptConfig`` and ``AffixConfig``, with their allowed placements."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import MethodConfig, check_choice, check_positive_int

PROMPT_PLACEMENTS = ("prefix", "suffix", "infix", "prefix_suffix")
_INNER = ("prefix", "suffix", "infix", "centfix", "centfix_v2")
AFFIX_PLACEMENTS = tuple(f"{s}_{p}" for s in ("single", "dual") for p in _INNER) + (
    "outer_single_prefix",
    "outer_dual_prefix",
)


@dataclass
class PromptConfig(MethodConfig):
    """Prompt-tuning: ``tokens`` learnable tokens in the input embedding space.

    ``placement`` defaults to ``prefix_suffix`` on Vim and ``prefix`` (the only one it supports) on the LM.
    """

    tokens: int = 8
    placement: str | None = None
    projection: bool = False

    def validate(self, where: str) -> None:
        super().validate(where)
        check_positive_int(self.tokens, f"{where}.tokens")
        if self.placement is not None:
            check_choice(self.placement, PROMPT_PLACEMENTS, f"{where}.placement")
        check_choice(self.projection, (True, False), f"{where}.projection")


@dataclass
class AffixConfig(MethodConfig):
    """Affix-tuning: tokens entering each mixer's scan (``inner``) or its input (``outer_*``), outputs dropped.

    ``placement`` defaults to ``dual_prefix`` on Vim and ``single_prefix`` on the (unidirectional) LM.
    """

    tokens: int = 3
    placement: str | None = None
    projection: bool = False
    hidden: int | None = None

    def validate(self, where: str) -> None:
        super().validate(where)
        check_positive_int(self.tokens, f"{where}.tokens")
        if self.placement is not None:
            check_choice(self.placement, AFFIX_PLACEMENTS, f"{where}.placement")
        check_choice(self.projection, (True, False), f"{where}.projection")
        if self.hidden is not None:
            check_positive_int(self.hidden, f"{where}.hidden")
