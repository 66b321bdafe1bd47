"""transformers' Mamba objects as hybridsearch models, converted exactly.

``mamba_lm_from_object(obj)`` takes a ``MambaForCausalLM``, its ``MambaConfig`` or its state dict and returns a
``MambaLM`` with the same weights (copied into float32) and therefore the same logits. The architecture comes
from the object's config under the rules of a ``config.json`` (``checkpoint.config_from_dict``: every key used or
refused in one line), or from the tensor shapes of a bare state dict. transformers itself is never imported:
its objects are recognised by their class, so importing hybridsearch needs no extra.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from . import checkpoint as ckpt
from .mamba_lm import MambaConfig, MambaLM


def is_transformers_object(obj: object) -> bool:
    return type(obj).__module__.split(".")[0] == "transformers"


def _describe(obj: object) -> str:
    return f"transformers {type(obj).__name__}" if is_transformers_object(obj) else type(obj).__name__


def config_of_transformers(config: object) -> MambaConfig:
    """A transformers config object read as its ``config.json`` would be (``to_diff_dict`` is what
    ``save_pretrained`` writes), so an object and its saved folder obey the same rules."""
    what = f"<{_describe(config)}>"
    try:
        data = config.to_diff_dict()
    except Exception as e:  # not a PreTrainedConfig after all
        raise CheckpointError(f"{what}: cannot read the config ({type(e).__name__}: {e})") from None
    return ckpt.config_from_dict(data, what)


def _shape(sd: Mapping[str, Tensor], key: str, dims: int, what: str) -> tuple[int, ...]:
    t = sd.get(key)
    if not isinstance(t, Tensor) or t.dim() != dims:
        raise CheckpointError(f"{what}: {key}: missing or not a {dims}-d tensor; expected a Mamba LM state dict "
                              "(transformers' MambaForCausalLM or mamba_ssm's MambaLMHeadModel keys)")
    return tuple(t.shape)


def config_from_state_dict(sd: Mapping[str, Tensor], what: str = "<state dict>") -> MambaConfig:
    """The Mamba LM that a state dict's tensor shapes describe. A state dict carries no RMSNorm epsilon:
    transformers' and mamba_ssm's default 1e-5 is used."""
    vocab, d_model = _shape(sd, "backbone.embedding.weight", 2, what)
    layers = {k.split(".")[2] for k in sd if k.startswith("backbone.layers.")}
    n_layer = len(layers)
    if layers != {str(i) for i in range(n_layer)} or n_layer == 0:
        raise CheckpointError(f"{what}: backbone.layers.* are not numbered 0 to n - 1")
    two_e, d = _shape(sd, "backbone.layers.0.mixer.in_proj.weight", 2, what)
    e, d_state = _shape(sd, "backbone.layers.0.mixer.A_log", 2, what)
    _, _, d_conv = _shape(sd, "backbone.layers.0.mixer.conv1d.weight", 3, what)
    _, dt_rank = _shape(sd, "backbone.layers.0.mixer.dt_proj.weight", 2, what)
    if d != d_model or two_e != 2 * e or e % d_model:
        raise CheckpointError(f"{what}: in_proj {two_e}x{d}, A_log {e}x{d_state} and embeddings {vocab}x{d_model} "
                              "do not describe one Mamba mixer (in_proj must be (2 * expand * d_model, d_model))")
    return MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=vocab, d_state=d_state, d_conv=d_conv,
                       expand=e // d_model, dt_rank=dt_rank, pad_vocab_size_multiple=1)


def _build(cfg: MambaConfig, device: str | torch.device | None) -> MambaLM:
    with torch.device(device or "cpu"):
        return MambaLM(cfg)


def mamba_lm_from_object(obj: object, device: str | torch.device | None = None) -> MambaLM:
    """A ``MambaLM`` from a transformers ``MambaForCausalLM`` (weights copied exactly), a transformers
    ``MambaConfig`` (random initialisation, as ``MambaForCausalLM(config)``) or a Mamba LM state dict."""
    what = f"<{_describe(obj)}>"
    if isinstance(obj, nn.Module):
        if not (is_transformers_object(obj) and type(obj).__name__.endswith("ForCausalLM")):
            raise CheckpointError(f"{what}: not a model hybridsearch converts; pass a transformers "
                                  "MambaForCausalLM, its config or its state dict (or a name or path)")
        cfg = config_of_transformers(obj.config)
        if device is None:
            device = next(iter(obj.parameters()), torch.empty(0)).device
        sd = obj.state_dict()
    elif isinstance(obj, Mapping):
        sd = ckpt.normalize_lm_keys({str(k): v for k, v in obj.items()})
        cfg = config_from_state_dict(sd, what)
    elif is_transformers_object(obj) and hasattr(obj, "to_diff_dict"):
        return _build(config_of_transformers(obj), device)
    else:
        raise CheckpointError(f"create_model: got a {type(obj).__name__}; expected a registered name, a "
                              "checkpoint path, a Hugging Face Hub id, or a transformers MambaForCausalLM / "
                              "MambaConfig / state dict")
    model = _build(cfg, device)
    if model.lm_head.weight.is_meta:  # the architecture only
        return model
    ckpt.load_into(model, ckpt.normalize_lm_keys(sd), what)
    if isinstance(obj, nn.Module):
        model.train(obj.training)
    return model


__all__ = ["config_from_state_dict", "config_of_transformers", "is_transformers_object", "mamba_lm_from_object"]
