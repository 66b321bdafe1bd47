"""Mamba-2 checkpoints: mamba_ssm's config (``ssm_cfg.layer: Mamba2``) and transformers' (``model_type: mamba2``)
read into a ``Mamba2Config`` under the rules of ``checkpoint.py`` (every key used, accepted as initialisation or
runtime only, or refused with one line naming the file, the key and the allowed values); transformers'
``Mamba2ForCausalLM`` / ``Mamba2Config`` objects converted exactly. ``lm_config_from_dict`` is the one entry for an
LM ``config.json``: Mamba-2 here, Mamba-1 in ``checkpoint.config_from_dict``. Writing: ``checkpoint.save_mamba``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from . import checkpoint as ckpt
from .checkpoint import _RUNTIME, _Keys, _show
from .mamba2 import NO_LIMIT, Mamba2Config, Mamba2LM
from .mamba_lm import MambaConfig

_SSM2_KEYS = ("layer", "d_state", "d_conv", "conv_init", "expand", "headdim", "d_ssm", "ngroups", "A_init_range",
              "D_has_hdim", "rmsnorm", "norm_before_gate", "dt_min", "dt_max", "dt_init_floor", "dt_limit", "bias",
              "conv_bias", "chunk_size", "use_mem_eff_path")
_HF2_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "state_size", "conv_kernel", "expand",
             "head_dim", "num_heads", "n_groups", "chunk_size", "use_bias", "use_conv_bias", "layer_norm_epsilon",
             "hidden_act", "residual_in_fp32", "tie_word_embeddings", "time_step_limit", "time_step_rank",
             "time_step_min", "time_step_max", "time_step_floor", "initializer_range", "rescale_prenorm_residual",
             "use_cache",
             # written by transformers 4.4x and never read by its Mamba2 (it always gates before the norm)
             "rms_norm", "norm_before_gate")


def _float(k: _Keys, key: str, v: object) -> float:
    """A number of a JSON list: plain, or infinity as JSON cannot hold it (``Infinity`` read by Python's json, or
    transformers 5's ``{"__float__": "Infinity"}``)."""
    if isinstance(v, dict) and list(v) == ["__float__"] and v["__float__"] in ("Infinity", "-Infinity"):
        return float(v["__float__"].replace("Infinity", "inf"))
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        raise k.fail(key, f"must hold numbers, got {_show(v)}")
    return float(v)


def _dt_limit(k: _Keys, key: str) -> tuple[float, float]:
    """(low, high) with 0 <= low < high <= inf: the clamp of dt after its softplus (mamba_ssm's ``dt_limit``)."""
    v = k.get(key, list(NO_LIMIT))
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise k.fail(key, f"must be [low, high], got {_show(v)}")
    lo, hi = (_float(k, key, x) for x in v)
    if not (0.0 <= lo < hi) or math.isinf(lo):
        raise k.fail(key, f"must be [low, high] with 0 <= low < high (high may be Infinity), got {_show(v)}")
    return lo, hi


def _range(k: _Keys, key: str) -> None:
    """mamba_ssm's ``A_init_range``: initialisation only (the weights replace it), but it must make sense."""
    v = k.get(key, [1, 16])
    ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    if not ok or not 0 < v[0] <= v[1]:
        raise k.fail(key, f"must be [low, high] with 0 < low <= high, got {_show(v)}")


def _heads(k: _Keys, d_model: int, expand: int, headdim: int, ngroups: int, names: tuple[str, str]) -> None:
    d_inner = expand * d_model
    if d_inner % headdim:
        raise k.fail(names[0], f"{headdim} does not divide expand * d_model = {d_inner} (the heads' channels)")
    if (d_inner // headdim) % ngroups:
        raise k.fail(names[1], f"{ngroups} does not divide the {d_inner // headdim} heads")


def _from_mamba_ssm2(c: dict, path: str) -> Mamba2Config:
    k = _Keys(c, path)
    ckpt.mamba_ssm_backbone_keys(k)
    s = _Keys(k.mapping("ssm_cfg"), path, "ssm_cfg.")
    s.no_other_keys(_SSM2_KEYS)
    d_model, expand = k.int("d_model"), s.int("expand", 2)
    headdim, ngroups = s.int("headdim", 64), s.int("ngroups", 1)
    _heads(s, d_model, expand, headdim, ngroups, ("headdim", "ngroups"))
    d_ssm = s.get("d_ssm", None)
    if d_ssm is not None and d_ssm != expand * d_model:
        raise s.fail("d_ssm", f"{_show(d_ssm)} is not supported (a gated MLP beside the SSM); allowed: null, "
                              f"{expand * d_model} (expand * d_model)")
    if s.get("conv_init", None) is not None:
        s.number("conv_init", 1.0)  # initialisation only
    _range(s, "A_init_range")
    for key in ("dt_min", "dt_max", "dt_init_floor"):  # initialisation only: the weights replace it
        s.number(key, 1.0)
    s.flag("use_mem_eff_path", True)
    return Mamba2Config(
        d_model=d_model, n_layer=k.int("n_layer"), vocab_size=k.int("vocab_size"), d_state=s.int("d_state", 128),
        d_conv=s.int("d_conv", 4), expand=expand, headdim=headdim, ngroups=ngroups,
        chunk_size=s.int("chunk_size", 256), rmsnorm=s.flag("rmsnorm", True),
        norm_before_gate=s.flag("norm_before_gate", False), D_has_hdim=s.flag("D_has_hdim", False),
        dt_limit=_dt_limit(s, "dt_limit"), bias=s.flag("bias", False), conv_bias=s.flag("conv_bias", True),
        tie_embeddings=k.flag("tie_embeddings", True), pad_vocab_size_multiple=k.int("pad_vocab_size_multiple", 8),
        eps=1e-5,  # mamba_ssm's RMSNorms (norm_epsilon is no config key; the gated norm's is fixed)
    )


def _from_hf2(c: dict, path: str) -> Mamba2Config:
    """transformers' ``Mamba2Config``; a missing key takes transformers' default, as ``from_pretrained`` does."""
    k = _Keys(c, path)
    k.no_other_keys(_HF2_KEYS, _RUNTIME)
    d_model, expand, head_dim = k.int("hidden_size"), k.int("expand", 2), k.int("head_dim", 64)
    n_groups = k.int("n_groups", 8)
    _heads(k, d_model, expand, head_dim, n_groups, ("head_dim", "n_groups"))
    if k.int("num_heads", 128) != expand * d_model // head_dim:
        raise k.fail("num_heads", f"{c.get('num_heads', 128)} disagrees with expand * hidden_size / head_dim = "
                                  f"{expand * d_model // head_dim}")
    k.only("hidden_act", "silu", ("silu", "swish"))
    k.only("residual_in_fp32", True, (True,), "the residual stream is always kept in fp32 here")
    k.only("rms_norm", True, (True,), "transformers' Mamba2 always has its gated RMSNorm")
    k.flag("norm_before_gate", False)  # never read by transformers' Mamba2: the logits follow transformers
    if k.get("time_step_rank", "auto") != "auto":
        k.int("time_step_rank")  # computed by transformers, read by no Mamba-2 layer
    for key in ("time_step_min", "time_step_max", "time_step_floor", "initializer_range"):
        k.number(key, 1.0)  # initialisation only: the weights replace it
    for key in ("rescale_prenorm_residual", "use_cache"):
        k.flag(key, False)
    return Mamba2Config(
        d_model=d_model, n_layer=k.int("num_hidden_layers"), vocab_size=k.int("vocab_size"),
        d_state=k.int("state_size", 128), d_conv=k.int("conv_kernel", 4), expand=expand, headdim=head_dim,
        ngroups=n_groups, chunk_size=k.int("chunk_size", 256), dt_limit=_dt_limit(k, "time_step_limit"),
        bias=k.flag("use_bias", False), conv_bias=k.flag("use_conv_bias", True),
        tie_embeddings=k.flag("tie_word_embeddings", False), pad_vocab_size_multiple=1,  # vocab_size as it is
        eps=k.number("layer_norm_epsilon", 1e-5, hi=1.0),
    )


def lm_config_from_dict(c: dict, path: str = "<config>") -> MambaConfig | Mamba2Config:
    """A Mamba LM ``config.json`` of either layout and either layer type, as the config of the model it builds.
    Its layout is decided as ``checkpoint.config_from_dict`` decides it, then its layer type: ``model_type``
    (``mamba`` / ``mamba2``) or ``ssm_cfg.layer`` (``Mamba1`` / ``Mamba2``); any other is refused in one line."""
    k = _Keys(c, path)
    if "model_type" in c or ("hidden_size" in c and "d_model" not in c):
        kind = k.only("model_type", "mamba", ("mamba", "mamba2"), note=" (transformers' MambaConfig and "
                      "Mamba2Config; FalconMamba and other model types are other architectures)")
        return _from_hf2(c, path) if kind == "mamba2" else ckpt.config_from_dict(c, path)
    ssm = c.get("ssm_cfg")
    if "d_model" in c and isinstance(ssm, dict):
        layer = _Keys(ssm, path, "ssm_cfg.").only("layer", "Mamba1", ("Mamba1", "Mamba2"),
                                                   note=" (Mamba3 and hybrids are other architectures)")
        if layer == "Mamba2":
            return _from_mamba_ssm2(c, path)
    return ckpt.config_from_dict(c, path)


def lm_config_from_json(path: Path) -> MambaConfig | Mamba2Config:
    return lm_config_from_dict(ckpt.read_config_json(path), str(path))


def check_head(cfg: Mamba2Config, sd: dict[str, Tensor], source: str) -> None:
    """``normalize_lm_keys`` restores a missing ``lm_head.weight`` from the embedding, which only a tied model may
    have: an untied one without its head is refused as a missing key."""
    if not cfg.tie_embeddings and sd.get("lm_head.weight") is sd.get("backbone.embedding.weight"):
        raise CheckpointError(f"{source}: does not match the model: missing keys: lm_head.weight (the config "
                              "unties the head from the embedding)")


# -- transformers objects ---------------------------------------------------------------------------------------
def _model_type(obj: object) -> str | None:
    config = obj if hasattr(obj, "to_diff_dict") else getattr(obj, "config", None)
    return getattr(config, "model_type", None)


def is_mamba2_object(obj: object) -> bool:
    """A transformers ``Mamba2ForCausalLM`` or ``Mamba2Config``, or a Mamba-2 state dict (its ``dt_bias``)."""
    if isinstance(obj, Mapping):
        return any(isinstance(k, str) and k.endswith("mixer.dt_bias") for k in obj)
    return type(obj).__module__.split(".")[0] == "transformers" and _model_type(obj) == "mamba2"


def mamba2_lm_from_object(obj: object, device: str | torch.device | None = None) -> Mamba2LM:
    """A ``Mamba2LM`` from transformers' ``Mamba2ForCausalLM`` (its config under the rules of a ``config.json``,
    its weights copied exactly into float32, its train / eval mode kept) or its ``Mamba2Config`` (random
    initialisation). A bare state dict is refused: it does not say its number of groups."""
    what = f"<transformers {type(obj).__name__}>"
    if isinstance(obj, Mapping):
        raise CheckpointError("<state dict>: a Mamba-2 state dict does not say its n_groups (nor its RMSNorm "
                              "epsilon or chunk size); pass the Mamba2ForCausalLM, a checkpoint folder or its config")
    config = obj if hasattr(obj, "to_diff_dict") else obj.config
    try:
        data = config.to_diff_dict()
    except Exception as e:  # not a PreTrainedConfig after all
        raise CheckpointError(f"{what}: cannot read the config ({type(e).__name__}: {e})") from None
    cfg = _from_hf2(data, what)
    if not isinstance(obj, nn.Module):
        with torch.device(device or "cpu"):
            return Mamba2LM(cfg)
    if not type(obj).__name__.endswith("ForCausalLM"):
        raise CheckpointError(f"{what}: not a model hybridsearch converts; pass a transformers Mamba2ForCausalLM, "
                              "its config, or a checkpoint folder")
    if device is None:
        device = next(iter(obj.parameters()), torch.empty(0)).device
    with torch.device(device):
        model = Mamba2LM(cfg)
    if model.lm_head.weight.is_meta:  # the architecture only
        return model
    sd = ckpt.normalize_lm_keys(obj.state_dict())
    check_head(cfg, sd, what)
    ckpt.load_into(model, sd, what)
    model.train(obj.training)
    return model


__all__ = ["check_head", "is_mamba2_object", "lm_config_from_dict", "lm_config_from_json", "mamba2_lm_from_object"]
