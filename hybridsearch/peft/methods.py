"""The method registry: every MambaPEFT method by its pinned name, with its config class and attach function.

Registration order is the canonical order in which a hybrid is applied and exported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .config import (
    AdapterConfig,
    AdditionalScanConfig,
    AffixConfig,
    LoraConfig,
    MethodConfig,
    PartialConfig,
    PromptConfig,
    parse_layers,
)
from .lora import EmbeddingLora, LinearLora, PatchEmbedLora
from .partial import PartialDelta
from .scan import AdditionalScan
from .tokens import Affix, Prompt


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config: type[MethodConfig]
    attach: Callable[[nn.Module, MethodConfig, str], None]
    description: str
    kinds: tuple[str, ...] = ("vim", "lm")
    per_layer: bool = True  # honours ``layers``

    def defaults(self, **overrides) -> MethodConfig:
        return self.config(**overrides)


METHODS: Registry[MethodSpec] = Registry("PEFT method")


def _register(name: str, config: type[MethodConfig], description: str, kinds=("vim", "lm"), per_layer=True):
    def deco(fn):
        METHODS.register(name, MethodSpec(name, config, fn, description, kinds, per_layer))
        return fn

    return deco


def _defaults(cls, **kw):
    """A config subclass with different defaults (the reference's per-method defaults)."""
    import dataclasses

    fields = [(k, type(v), dataclasses.field(default=v)) for k, v in kw.items()]
    return dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,))


def _layers(model: nn.Module, cfg: MethodConfig, name: str) -> list[int]:
    return parse_layers(cfg.layers, len(model.mixers), f"methods.{name}.layers")


def _directions(mixer, names: str) -> dict:
    return {d: mixer.param(names, d) for d in mixer.directions}


# -- LoRA family on the mixers -----------------------------------------------------------------------------
def _rows(part: str, m) -> slice:
    E, R, N = m.d_inner, m.dt_rank, m.d_state
    return {
        "all": slice(None), "X": slice(0, E), "Z": slice(E, 2 * E),
        "d": slice(0, R), "B": slice(R, R + N), "C": slice(R + N, R + 2 * N),
    }[part]


def _lora_attacher(target: str, part: str, site: str | None, shared: bool, relu: bool = False):
    """shared: one adapter per layer (in_proj / out_proj are shared by both Vim directions)."""

    def attach(model: nn.Module, cfg: LoraConfig, name: str) -> None:
        if relu and cfg.dora:  # DoRA needs a weight delta; the adapter's ReLU has none
            raise ConfigError(f"methods.{name}.dora: DoRA is available on the linear LoRA family only")
        for i, rank in cfg.layer_ranks(len(model.mixers), f"methods.{name}").items():
            m = model.mixers[i]
            base = {"f": m.param(target, "f")} if shared else _directions(m, target)
            m.peft[name] = LinearLora(
                name, target, base, _rows(part, m), rank, cfg.scale, cfg.dropout, cfg.dora, site, relu
            )

    return attach


_LORA = [
    ("parallel_adapter", "out_proj.weight", "all", "out_proj", True,
     "ParallelAdapter beside out_proj (down, ReLU, up)"),
    ("lora_in_proj", "in_proj.weight", "all", "in_proj", True, "LoRA on the whole in_proj output (X and Z)"),
    ("lora_X", "in_proj.weight", "X", "in_proj", True, "LoRAp(X): LoRA on the X half of in_proj"),
    ("lora_Z", "in_proj.weight", "Z", "in_proj", True, "LoRAp(Z): LoRA on the Z (gate) half of in_proj"),
    ("lora_x_proj", "x_proj.weight", "all", None, False, "LoRA(x_proj), merged, per scan direction"),
    ("lora_d", "x_proj.weight", "d", None, False, "LoRAp(d): the dt rows of x_proj"),
    ("lora_B", "x_proj.weight", "B", None, False, "LoRAp(B): the B rows of x_proj"),
    ("lora_C", "x_proj.weight", "C", None, False, "LoRAp(C): the C rows of x_proj"),
    ("lora_dt", "dt_proj.weight", "all", None, False, "LoRA(dt_proj), merged, per scan direction"),
    ("lora_out_proj", "out_proj.weight", "all", "out_proj", True, "LoRA(out_proj) branch"),
]
_LORA_DEFAULT_RANK = {"parallel_adapter": 32, "lora_in_proj": 32, "lora_X": 64, "lora_Z": 64, "lora_x_proj": 64,
                      "lora_d": 64, "lora_B": 64, "lora_C": 64, "lora_dt": 64, "lora_out_proj": 96}


def _lora_config(name: str):
    base = AdapterConfig if name == "parallel_adapter" else LoraConfig
    return _defaults(base, rank=_LORA_DEFAULT_RANK[name])


# registration order = canonical order (the method list)
_register("parallel_adapter", _lora_config("parallel_adapter"), _LORA[0][5])(
    _lora_attacher("out_proj.weight", "all", "out_proj", True, relu=True)
)


@_register("lora_embed", _defaults(LoraConfig, rank=32, scale=1.0), "LoRA on the patch / token embedding",
           per_layer=False)
def _attach_lora_embed(model: nn.Module, cfg: LoraConfig, name: str) -> None:
    if isinstance(cfg.rank, dict):
        raise ConfigError(f"methods.{name}.rank: must be an integer (the embedding is not per layer)")
    if cfg.dora:
        raise ConfigError(f"methods.{name}.dora: DoRA is available on the linear LoRA family only")
    if model.kind == "vim":
        c = model.cfg
        model.peft[name] = PatchEmbedLora(c.in_chans, c.d_model, c.patch_size, cfg.rank, cfg.scale, cfg.dropout)
    else:
        w = model.backbone.embedding.weight
        model.peft[name] = EmbeddingLora(w.shape[0], w.shape[1], cfg.rank, cfg.scale).to(w.device)


for _name, _target, _part, _site, _shared, _desc in _LORA[1:]:
    _register(_name, _lora_config(_name), _desc)(_lora_attacher(_target, _part, _site, _shared))


# -- tokens ---------------------------------------------------------------------------------------------------
@_register("prompt", PromptConfig, "Prompt-tuning: learnable tokens in the input sequence", per_layer=False)
def _attach_prompt(model: nn.Module, cfg: PromptConfig, name: str) -> None:
    placement = cfg.placement or ("prefix_suffix" if model.kind == "vim" else "prefix")
    if model.kind == "lm" and placement != "prefix":
        raise ConfigError(f"methods.{name}.placement: the language model supports only 'prefix'")
    d = model.cfg.d_model
    model.peft[name] = Prompt(d, cfg.tokens, placement, cfg.projection)


@_register("affix", AffixConfig, "Affix-tuning: tokens in each scan, outputs discarded")
def _attach_affix(model: nn.Module, cfg: AffixConfig, name: str) -> None:
    placement = cfg.placement or ("dual_prefix" if model.kind == "vim" else "single_prefix")
    if model.kind == "lm" and "dual" in placement:
        raise ConfigError(f"methods.{name}.placement: {placement!r} needs two scan directions; "
                          "the language model is unidirectional (use single_* or outer_single_prefix)")
    m0 = model.mixers[0]
    layers = _layers(model, cfg, name)
    model.peft[name] = Affix(layers, m0.d_model, m0.d_inner, cfg.tokens, placement, cfg.projection, cfg.hidden)


@_register("additional_scan", AdditionalScanConfig, "Additional-scan: N' extra SSM states per channel")
def _attach_additional_scan(model: nn.Module, cfg: AdditionalScanConfig, name: str) -> None:
    for i in _layers(model, cfg, name):
        m = model.mixers[i]
        m.peft[name] = AdditionalScan(_directions(m, "A_log"), cfg.states, cfg.position, cfg.init, cfg.constant,
                                      cfg.zero_init)


# -- partial tuning ---------------------------------------------------------------------------------------------
def _partial_attacher(targets: tuple[str, ...]):
    """targets[0] gets the delta; unfreeze trains every target (conv1d: weight and bias)."""

    def attach(model: nn.Module, cfg: PartialConfig, name: str) -> None:
        for i in _layers(model, cfg, name):
            m = model.mixers[i]
            if cfg.mode == "delta":
                m.peft[name] = PartialDelta(name, targets[0], _directions(m, targets[0]))
            else:
                for t in targets:
                    for d in m.directions:
                        _unfreeze(model, m.param(t, d), name)

    return attach


def _unfreeze(model: nn.Module, p: nn.Parameter, method: str) -> None:
    p.requires_grad_(True)
    model._peft_unfrozen[id(p)] = method


def _model_partial_attacher(target: str):
    def attach(model: nn.Module, cfg: PartialConfig, name: str) -> None:
        if model.kind != "vim":
            raise ConfigError(f"methods.{name}: applies to Vision Mamba only (the LM has no {target})")
        if cfg.mode == "delta":
            model.peft[name] = PartialDelta(name, target, {"f": getattr(model, target)})
        else:
            _unfreeze(model, getattr(model, target), name)

    return attach


_register("tune_A", PartialConfig, "A-tuning: A_log (+ A_b_log)")(_partial_attacher(("A_log",)))
_register("tune_D", PartialConfig, "D-tuning: D (+ D_b)")(_partial_attacher(("D",)))
_register("tune_conv1d", PartialConfig, "Conv1d-tuning: conv1d weight (unfreeze: weight and bias)")(
    _partial_attacher(("conv1d.weight", "conv1d.bias"))
)
_register("tune_dt_bias", _defaults(PartialConfig, decay_mult=100.0), "Bias-tuning: dt_proj bias")(
    _partial_attacher(("dt_proj.bias",))
)
_register("tune_cls_token", PartialConfig, "CLS-token-tuning", kinds=("vim",), per_layer=False)(
    _model_partial_attacher("cls_token")
)
_register("tune_pos_embed", PartialConfig, "Pos-embed-tuning", kinds=("vim",), per_layer=False)(
    _model_partial_attacher("pos_embed")
)
