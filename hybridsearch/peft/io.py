"""Saving and loading a model's adapters: the trainable tensors, the hybrid config and a metadata file.

A saved folder holds ``adapter_model.safetensors`` (every trainable tensor by its state-dict name, so the
parameter names are the file format, plus the methods' own state buffers such as sparse dimension tuning's
selection; never a transient warm-up tensor), ``peft.yaml`` (the hybrid) and ``adapter_meta.json`` (model kind,
architecture and counts). A model still in a method's warm-up cannot be saved: its adapters are not made yet.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .apply import apply_peft
from .counting import count_parameters
from .hosts import hosts
from .hybrid import PeftConfig
from .lifecycle import in_warmup, transient_names

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "peft.yaml"
META_FILE = "adapter_meta.json"


def _saved(model: nn.Module) -> dict[str, torch.Tensor]:
    """What an adapter file holds, by name: the trainable tensors (transient ones aside) and the methods'
    persistent buffers."""
    transient = transient_names(model)
    out = {n: p for n, p in model.named_parameters() if p.requires_grad and n not in transient}
    persistent = set(model.state_dict())
    out.update((n, b) for n, b in model.named_buffers() if "peft" in n.split(".") and n in persistent)
    return out


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in _saved(model).items()}


def save_adapters(model: nn.Module, directory: str | Path, extra_meta: dict | None = None) -> Path:
    """Write the trainable tensors (``adapter_model.safetensors``), ``peft.yaml`` and ``adapter_meta.json``."""
    from safetensors.torch import save_file

    cfg = getattr(model, "peft_config", None)
    if cfg is None:
        raise ConfigError("save_adapters: the model has no PEFT config; call apply_peft first")
    if warming := in_warmup(model):
        left = ", ".join(f"{m} ({n} optimizer steps left)" for m, n in sorted(warming.items()))
        raise ConfigError(f"save_adapters: still in the warm-up of {left}: nothing to save yet; train past it "
                          "(training loops call peft.after_optimizer_step) or call peft.end_warmup(model)")
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
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    expected = set(_saved(model))
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
    for host in hosts(model):
        for m in host.peft.values():
            m.after_load()
    return model
