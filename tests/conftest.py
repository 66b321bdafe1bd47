"""Shared fixtures and the PEFT test matrix.

The matrix is built from the method registry: every registered method on every model kind it applies to
(``METHODS.get(name).kinds`` and the mixer parts it needs: kind ``mamba2``, a tiny Mamba-2 LM, has no dt_proj and
Mamba-1 no gated norm), plus variants (DoRA, every prompt / affix placement, Additional-scan positions
and inits, partial-tuning modes, ``layers`` subsets and per-layer rank mappings). Tests ask for it by argument
name and ``pytest_generate_tests`` parametrises them:

* ``variant``: every variant;
* ``zero_init_variant``: variants whose output is unchanged right after ``apply_peft``;
* ``mergeable_variant`` / ``unmergeable_variant``: variants ``merge_peft(strict=True)`` folds / refuses.

Sparse dimension tuning (``sdt``) has a warm-up: tests that train or save a model take it past the warm-up
(``peft.end_warmup``), as a training run does; ``tests/peft/test_sdt.py`` covers the warm-up itself.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

# `run` without --workers starts one process per core; tests run the in-process worker unless they ask for more
os.environ.setdefault("HYBRIDSEARCH_WORKERS", "1")

from hybridsearch import METHODS, PeftConfig
from hybridsearch.models import Mamba2Config, MambaConfig, VimConfig, build
from hybridsearch.peft.tokens import AFFIX_PLACEMENTS, PROMPT_PLACEMENTS

torch.set_num_threads(1)  # tiny models: thread start-up costs far more than it saves on 2 shared cores

VIM_CONFIG = VimConfig(d_model=16, depth=2, img_size=16, patch_size=4, d_state=4, num_classes=5, drop_path_rate=0.0)
LM_CONFIG = MambaConfig(d_model=16, n_layer=2, vocab_size=100)
# 8 heads of 8 in 2 groups (the head -> group map is exercised), chunks of 4 (the 8 tokens cross a chunk boundary)
MAMBA2_CONFIG = Mamba2Config(d_model=32, n_layer=2, vocab_size=100, d_state=8, headdim=8, ngroups=2, chunk_size=4,
                             pad_vocab_size_multiple=8)
TINY = {"vim": VIM_CONFIG, "lm": LM_CONFIG, "mamba2": MAMBA2_CONFIG}
KINDS = ("vim", "lm", "mamba2")  # "mamba2": a Mamba-2 LM (its model kind is "lm")
LM_SEQ = 8

# -- what each registered method is (a new method must be classified here: see test_matrix_knows_every_method)
LORA_FAMILY = ("lora_in_proj", "lora_X", "lora_Z", "lora_x_proj", "lora_d", "lora_B", "lora_C", "lora_dt",
               "lora_out_proj")
PARTIAL = ("tune_A", "tune_D", "tune_conv1d", "tune_dt_bias", "tune_norm", "tune_cls_token", "tune_pos_embed")
TOKENS = ("prompt", "affix")
STATE = ("state_offset", "output_offset", "init_state")  # zero-init, not mergeable
KNOWN_METHODS = {*LORA_FAMILY, *PARTIAL, *TOKENS, *STATE, "parallel_adapter", "lora_embed", "additional_scan", "sdt"}
RANKED = (*LORA_FAMILY, "parallel_adapter")  # accept a per-layer rank mapping


@functools.cache
def applicable(kind: str) -> list[str]:
    """The methods that apply to the tiny model of ``kind``: its model kind, and every mixer part they need."""
    model = build(TINY[kind], device="meta")
    mixer = model.mixers[0]
    return [n for n in METHODS.names() if model.kind in METHODS.get(n).kinds
            and all(mixer.peft_part(p) is not None for p in METHODS.get(n).parts)]


def _is_zero_init(kind: str, name: str, settings: dict) -> bool:
    if name in TOKENS:
        return False
    if name == "additional_scan":
        return bool(settings.get("zero_init", False))
    return True


def _is_mergeable(kind: str, name: str, settings: dict) -> bool:
    if name in LORA_FAMILY or name in PARTIAL or name == "sdt":
        return True
    return name == "lora_embed" and kind == "vim"  # the LM's embedding is tied to its head


def _is_inert(kind: str, name: str, settings: dict) -> bool:
    """Suffix affix tokens come after every real token of each (causal) scan: no effect on any output, by design
    (the reference keeps ``inner_single_suffix`` as an ablation)."""
    return name == "affix" and settings.get("placement") in ("single_suffix", "dual_suffix")


def _refused(kind: str, methods: dict) -> bool:
    """Settings a model refuses by design (tests/peft/test_mamba2_peft.py checks the refusals): Mamba-2's extra
    states scan on their own, so Additional-scan there takes no column position and no S4D init."""
    scan = methods.get("additional_scan", {})
    return kind == "mamba2" and (scan.get("position") == "suffix" or scan.get("init") == "s4d")


@dataclass(frozen=True, eq=False)
class Variant:
    kind: str
    methods: dict[str, dict[str, Any]]
    label: str

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.label}"

    @property
    def config(self) -> dict[str, Any]:
        return {"methods": {k: dict(v) for k, v in self.methods.items()}}

    def _all(self, pred) -> bool:
        return all(pred(self.kind, n, s) for n, s in self.methods.items())

    @property
    def zero_init(self) -> bool:
        return self._all(_is_zero_init)

    @property
    def mergeable(self) -> bool:
        return self._all(_is_mergeable)

    @property
    def inert(self) -> bool:
        return self._all(_is_inert)

    def __repr__(self) -> str:
        return self.id


def _variants(kind: str) -> list[Variant]:
    out: list[Variant] = []
    names = applicable(kind)

    def add(label: str, methods: dict) -> None:
        if set(methods) <= set(names) and not _refused(kind, methods):
            out.append(Variant(kind, methods, label))

    for n in names:
        add(n, {n: {}})  # the method's defaults
    for n in LORA_FAMILY:
        add(f"{n}-dora", {n: {"dora": True}})
    for n in ("lora_X", "lora_x_proj", "lora_dt", "lora_out_proj", "parallel_adapter"):
        add(f"{n}-rank_map", {n: {"rank": {"0": 2, "1": 5}}})
    for n in ("lora_in_proj", "lora_C", "parallel_adapter", "affix", "additional_scan", "tune_A", "sdt", *STATE):
        add(f"{n}-layer1", {n: {"layers": [1]}})
    add("sdt-A_log", {"sdt": {"targets": ["A_log"]}})
    add("sdt-B_C", {"sdt": {"targets": ["C", "B"]}})  # any order: the canonical one is kept
    add("sdt-half", {"sdt": {"warmup_steps": 1, "channel_freeze": 0.5, "state_freeze": 0.0}})
    add("tune_conv1d-unfreeze-layer1", {"tune_conv1d": {"mode": "unfreeze", "layers": "1-1"}})
    prompt_placements = PROMPT_PLACEMENTS if kind == "vim" else ("prefix",)
    for pl in prompt_placements:
        for proj in (False, True):
            add(f"prompt-{pl}{'-proj' if proj else ''}", {"prompt": {"placement": pl, "projection": proj}})
    affix_placements = AFFIX_PLACEMENTS if kind == "vim" else (
        tuple(p for p in AFFIX_PLACEMENTS if p.startswith("single_")) + ("outer_single_prefix",))
    for pl in affix_placements:
        for proj in (False, True):
            settings = {"placement": pl, "projection": proj} | ({"hidden": 8} if proj else {})
            add(f"affix-{pl}{'-proj' if proj else ''}", {"affix": settings})
    for pos in ("prefix", "suffix"):
        for init in ("copy", "s4d", "constant"):
            extra = {"constant": 0.5} if init == "constant" else {}
            add(f"additional_scan-{pos}-{init}", {"additional_scan": {"position": pos, "init": init, **extra}})
    add("additional_scan-zero_init", {"additional_scan": {"states": 3, "zero_init": True}})
    for n in PARTIAL:
        if n in names:
            for mode in ("delta", "unfreeze"):
                add(f"{n}-{mode}", {n: {"mode": mode}})
    # drop exact duplicates of the defaults (same normalised config) but keep the first, readable, label
    seen, unique = set(), []
    for v in out:
        key = PeftConfig.from_dict(v.config).to_yaml()
        if key not in seen:
            seen.add(key)
            unique.append(v)
    return unique


VARIANTS = {kind: _variants(kind) for kind in KINDS}
ALL_VARIANTS = [v for kind in KINDS for v in VARIANTS[kind]]

MATRICES = {
    "variant": ALL_VARIANTS,
    "zero_init_variant": [v for v in ALL_VARIANTS if v.zero_init],
    "mergeable_variant": [v for v in ALL_VARIANTS if v.mergeable],
    "unmergeable_variant": [v for v in ALL_VARIANTS if not v.mergeable],
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for arg, values in MATRICES.items():
        if arg in metafunc.fixturenames:
            metafunc.parametrize(arg, values, ids=[v.id for v in values])


# -- tiny models, inputs and a loss ------------------------------------------------------------------------------
def tiny_model(kind: str, seed: int = 0) -> torch.nn.Module:
    """The tiny Vim / LM; the same seed gives the same base weights.

    Vim's head is zero-initialised (MMPreTrain default), which would make every Vim output the constant bias
    and every output comparison vacuous, so it gets random weights here (as after fine-tuning).
    """
    seed_cpu(seed)
    model = build(TINY[kind])
    if kind == "vim":
        with torch.no_grad():
            model.head.weight.normal_(0.0, 0.25)
            model.head.bias.normal_(0.0, 0.1)
    return model


def tiny_input(kind: str, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "vim":
        c = VIM_CONFIG
        return torch.randn(batch, c.in_chans, c.img_size, c.img_size, generator=g)
    return torch.randint(0, LM_CONFIG.vocab_size, (batch, LM_SEQ), generator=g)


def tiny_loss(kind: str, out: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on fixed targets (non-zero gradient even through Vim's zero-initialised head)."""
    g = torch.Generator().manual_seed(2)
    logits = out.reshape(-1, out.shape[-1])
    target = torch.randint(0, out.shape[-1], (logits.shape[0],), generator=g)
    return F.cross_entropy(logits.float(), target)


@torch.no_grad()
def perturb_trainable(model: torch.nn.Module, seed: int = 3, std: float = 0.1, head: bool = True) -> None:
    """Move every trainable tensor (optionally not the head) off its often-zero init, so adapters matter."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.requires_grad and (head or not name.startswith("head.")):
            p.add_(torch.randn(p.shape, generator=g) * std)


def seed_cpu(seed: int) -> None:
    """``torch.manual_seed`` for the CPU generator only: the full one also queues lazy CUDA / XPU / MTIA seeding
    calls, each capturing a stack trace, which costs milliseconds per call on a machine without them."""
    torch.default_generator.manual_seed(seed)


@pytest.fixture(autouse=True)
def _seed() -> None:
    seed_cpu(0)
