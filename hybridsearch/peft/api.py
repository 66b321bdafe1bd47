"""apply_peft, save_adapters / load_adapters, merge_peft, exact counting and optimizer groups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .config import PeftConfig
from .methods import METHODS

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "peft.yaml"
META_FILE = "adapter_meta.json"


def _hosts(model: nn.Module) -> list[nn.Module]:
    return [model, *model.mixers]


def apply_peft(model: nn.Module, config: PeftConfig | dict | str | Path) -> nn.Module:
    """Freeze the base, attach every method of ``config`` (canonical order), keep the classifier head trainable."""
    if not isinstance(config, PeftConfig):
        config = PeftConfig.from_dict(config) if isinstance(config, dict) else PeftConfig.from_yaml(config)
    if getattr(model, "peft_config", None) is not None:
        raise ConfigError("this model already has PEFT methods applied; build a fresh model to apply another")
    for p in model.parameters():
        p.requires_grad_(False)
    model._peft_unfrozen = {}
    device = next(model.parameters()).device  # new tensors live with the base (meta: nothing is allocated)
    for name in METHODS.names():
        if name not in config.methods:
            continue
        spec, cfg = METHODS.get(name), config.methods[name]
        if model.kind not in spec.kinds:
            raise ConfigError(f"methods.{name}: not available for this model (applies to {', '.join(spec.kinds)})")
        if not spec.per_layer and cfg.layers != "all":
            raise ConfigError(f"methods.{name}.layers: {name} is not per layer; remove 'layers'")
        with torch.device(device):
            spec.attach(model, cfg, name)
    for host in _hosts(model):  # new method parameters are the trainable ones
        for p in host.peft.parameters():
            p.requires_grad_(True)
    if model.kind == "vim":
        model.head.requires_grad_(True)
    model.peft_config = config
    return model


def method_of(model: nn.Module, name: str, param: nn.Parameter) -> str:
    """Which method (or ``head`` / ``base``) a parameter belongs to, by exact path segment, never substring."""
    parts = name.split(".")
    if "peft" in parts:
        return parts[parts.index("peft") + 1]
    unfrozen = getattr(model, "_peft_unfrozen", {})
    if id(param) in unfrozen:
        return unfrozen[id(param)]
    if parts[0] == "head":
        return "head"
    return "base"


def count_parameters(model: nn.Module) -> dict[str, Any]:
    """``{"base", "trainable", "head", "by_method"}``: exact counts (tied tensors counted once)."""
    seen: set[int] = set()
    base = trainable = head = 0
    by_method: dict[str, int] = {}
    for name, p in model.named_parameters(remove_duplicate=True):
        if id(p) in seen:
            continue
        seen.add(id(p))
        owner = method_of(model, name, p)
        n = p.numel()
        if "peft" not in name.split("."):  # base architecture, including tensors unfrozen by partial tuning
            base += n
        if p.requires_grad:
            trainable += n
            if owner == "head":
                head += n
            elif owner != "base":
                by_method[owner] = by_method.get(owner, 0) + n
        if owner in METHODS and owner not in by_method and p.requires_grad:
            by_method[owner] = 0
    if getattr(model, "peft_config", None) is not None:
        for name in model.peft_config.methods:
            by_method.setdefault(name, 0)
    return {"base": base, "trainable": trainable, "head": head, "by_method": by_method}


def count_config(model_name: str, config: PeftConfig | dict, num_classes: int | None = None) -> dict[str, Any]:
    """Exact counts for ``model_name`` + ``config`` on the meta device: no weights are allocated."""
    from ..models import create_model

    model = create_model(model_name, num_classes=num_classes, device="meta")
    apply_peft(model, config if isinstance(config, PeftConfig) else PeftConfig.from_dict(config))
    return count_parameters(model)


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


@torch.no_grad()
def merge_peft(model: nn.Module, strict: bool = True) -> nn.Module:
    """Fold every exactly-foldable method into the base weights and return the plain base model.

    Activation-branch LoRAs are folded with dropout off (the eval-mode function). Methods that change the
    architecture (prompt, affix, additional_scan, parallel_adapter, the LM's tied LoRA(embed)) cannot be
    folded: with ``strict`` that is an error naming them; otherwise they stay attached.
    """
    cfg = getattr(model, "peft_config", None)
    if cfg is None:
        raise ConfigError("merge_peft: the model has no PEFT methods applied")
    blocked = sorted({m.method for h in _hosts(model) for m in h.peft.values() if not m.mergeable})
    if blocked and strict:
        raise ConfigError(f"merge_peft: cannot fold {', '.join(blocked)} into the base weights exactly; "
                          "deploy with load_adapters instead, or pass strict=False to fold the rest")
    for host in _hosts(model):
        # every delta is defined on the unmerged tensors, as in forward (DoRA renormalises W + dW), so fold each
        # method from the original tensors and add the changes up; model-level methods are purely additive
        own = [p for n, p in host.named_parameters() if "peft" not in n.split(".")] if host is not model else []
        orig, change = [p.clone() for p in own], [torch.zeros_like(p) for p in own]
        for name in [n for n, m in host.peft.items() if m.mergeable]:
            host.peft[name].merge(host)
            for p, o, c in zip(own, orig, change):
                c += p - o
                p.copy_(o)
            del host.peft[name]
        for p, c in zip(own, change):
            p += c
    remaining = {n: c for n, c in cfg.methods.items() if n in blocked}
    model.peft_config = PeftConfig(remaining) if remaining else None
    if not remaining:
        model._peft_unfrozen = {}
        for p in model.parameters():
            p.requires_grad_(True)
    return model


_NO_DECAY_NAMES = ("A_log", "A_b_log", "cls_token", "pos_embed")


def _plain_no_decay(name: str, p: nn.Parameter) -> bool:
    """Full fine-tuning / head: no decay on norms, biases, tokens, A_log and D (the reference's rule)."""
    return p.ndim < 2 or name.split(".")[-1] in _NO_DECAY_NAMES


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 1.0,
                 head_decay_mult: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups with each method's ``lr_mult`` / ``decay_mult``. Pretrained-style tensors (A_log, norms,
    biases, DoRA magnitudes, unfrozen v1 tensors) get no decay; v2 deltas are decayed toward zero."""
    cfg = getattr(model, "peft_config", None)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    module_of = {f"{prefix}.{n}" if prefix else n: m for prefix, mod in model.named_modules()
                 for n, m in [("", mod)]}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        owner = method_of(model, name, p)
        mc = cfg.methods.get(owner) if cfg is not None else None
        lr_mult = mc.lr_mult if mc else (head_lr_mult if owner == "head" else 1.0)
        decay = weight_decay * (mc.decay_mult if mc else (head_decay_mult if owner == "head" else 1.0))
        local = name.split(".")
        no_decay = owner in ("base", "head") and _plain_no_decay(name, p)
        no_decay = no_decay or id(p) in getattr(model, "_peft_unfrozen", {})
        if "peft" in local:
            mod_path = ".".join(local[: local.index("peft") + 2])
            pm = module_of.get(mod_path)
            no_decay = no_decay or any(t in local for t in getattr(pm, "no_decay", ()))
        key = (lr * lr_mult, 0.0 if no_decay else decay)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": k[0], "weight_decay": k[1]} for k, ps in groups.items()]
