"""Saving and loading a model's adapters: the trainable tensors, the hybrid config and a metadata file.

A saved folder holds ``adapter_model.safetensors`` (every trainable tensor by its state-dict name, so the
parameter names are the file format), ``peft.yaml`` (the hybrid) and ``adapter_meta.json`` (model kind,
architecture and counts).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .apply import apply_peft
from .counting import count_parameters
from .hybrid import PeftConfig

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "peft.yaml"
META_FILE = "adapter_meta.json"


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_adapters(model: nn.Module, directory: str | Path, extra_meta: dict | None = None) -> Path:
    """Write the trainable tensors (``adapter_model.safetensors``), ``peft.yaml`` and ``adapter_meta.json``."""
    from safetensors.torch import save_file

    cfg = getattr(model, "peft_config", None)
    if cfg is None:
        raise ConfigError("save_adapters: the model has no PEFT config; call apply_peft first")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = trainable_state_dict(model)
    tmp = directory / (ADAPTER_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "hybridsearch-adapters"})
    tmp.replace(directory / ADAPTER_FILE)  # atomic: a crash never leaves a half-written adapter file
    cfg.to_yaml(directory / CONFIG_FILE)
    arch = model.cfg.to_dict()
    meta = {"kind": model.kind, "architecture": arch, "counts": count_parameters(model), **(extra_meta or {})}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def load_adapters(model: nn.Module, directory: str | Path) -> nn.Module:
    """Apply the saved config to ``model`` (if not applied yet) and load the saved trainable tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / ADAPTER_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: adapter file not found")
    if getattr(model, "peft_config", None) is None:
        apply_peft(model, PeftConfig.from_yaml(directory / CONFIG_FILE))
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read adapters ({e})") from None
    own = dict(model.named_parameters())
    expected = {n for n, p in own.items() if p.requires_grad}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)  # never frozen ones
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in tensors.items()
           if k in own and v.shape != own[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"{path}: does not match the model: missing {missing[:10]}, unexpected {unexpected[:10]}, "
            f"shape mismatches {bad[:10]}"
        )
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v.to(own[k].dtype))
    return model
