"""The LoRA family of a hybrid in Hugging Face PEFT's adapter format: ``adapter_config.json`` +
``adapter_model.safetensors`` of the parts PEFT's LoRA can express exactly; a README note and the returned
``left_out`` name the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..peft.lora import EmbeddingLora, LinearLora, PatchEmbedLora

HF_CONFIG, HF_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_NO_LORA = "no PEFT LoRA equivalent"
_WHY_NOT = {
    "prompt": "tokens added to the input sequence: PEFT's prompt methods feed attention, which Mamba has not",
    "affix": "tokens inside each scan: no PEFT equivalent for a state-space scan",
    "additional_scan": "extra SSM states change the architecture",
    **{f"tune_{t}": "tunes a base tensor directly (partial tuning): no PEFT LoRA equivalent"
       for t in ("A", "D", "conv1d", "dt_bias", "cls_token", "pos_embed")},
}


def _left_out_reason(module: nn.Module) -> str | None:
    """Why a method module cannot be written as PEFT LoRA, or None when it can."""
    if isinstance(module, LinearLora):
        if not module.mergeable:
            return "ParallelAdapter has a ReLU between its matrices: not a LoRA"
        if module.dora:
            return ("DoRA normalises each input column (MambaPEFT); PEFT's use_dora normalises each output row, "
                    "so it would give different weights")
        return None
    if isinstance(module, (PatchEmbedLora, EmbeddingLora)):
        return None
    return _WHY_NOT.get(module.method, _NO_LORA)


def _linear_parts(model: nn.Module, left_out: dict[str, str],
                  exported: set[str]) -> dict[str, list[tuple[Tensor, Tensor, float]]]:
    """Per target module path: (A (r, in), B (out, r) with zero rows outside the method's row block, scale)."""
    prefix = "backbone." if model.kind == "lm" else ""
    parts: dict[str, list[tuple[Tensor, Tensor, float]]] = {}
    for i, mixer in enumerate(model.mixers):
        for name, m in mixer.peft.items():
            why = _left_out_reason(m)
            if why is not None:
                left_out[name] = why
                continue
            exported.add(name)
            module = m.target.split(".")[0]
            for d, lr in m.adapters.items():
                weight = mixer.param(m.target, d)
                B = weight.new_zeros(weight.shape[0], lr.up.weight.shape[1])
                B[m.rows] = lr.up.weight.detach()  # a row slice (LoRAp) is a full LoRA with zero rows: exact
                path = f"{prefix}layers.{i}.mixer.{module}{'_b' if d == 'b' else ''}"
                parts.setdefault(path, []).append((lr.down.weight.detach(), B, float(m.scale)))
    return parts


def _combine(parts: list[tuple[Tensor, Tensor, float]]) -> tuple[Tensor, Tensor, float]:
    """Several LoRAs on one module as one: stacked ranks; scales folded into B unless they are all equal."""
    scales = {s for _, _, s in parts}
    common = scales.pop() if len(scales) == 1 else 1.0
    A = torch.cat([a for a, _, _ in parts], dim=0)
    B = torch.cat([b * (s / common) for _, b, s in parts], dim=1)
    return A, B, common


def _model_level(model: nn.Module, naming: str, tensors: dict, ranks: dict, alphas: dict,
                 left_out: dict[str, str], exported: set[str]) -> list[str]:
    """LoRA(embed): Vim's patch-embed conv (PEFT Conv2d LoRA) or the LM's token embedding (PEFT Embedding LoRA)."""
    targets = []
    for name, m in model.peft.items():
        if isinstance(m, PatchEmbedLora):
            path, r = "patch_embed.proj", m.down.weight.shape[0]
            tensors[f"base_model.model.{path}.lora_A.weight"] = m.down.weight.detach()
            tensors[f"base_model.model.{path}.lora_B.weight"] = m.up.weight.detach()
        elif isinstance(m, EmbeddingLora):
            path = "backbone.embeddings" if naming == "hf" else "backbone.embedding"
            r = m.A.shape[1]
            tensors[f"base_model.model.{path}.lora_embedding_A"] = m.A.detach().t()  # (r, vocab)
            tensors[f"base_model.model.{path}.lora_embedding_B"] = m.B.detach().t()  # (d_model, r)
        else:
            continue
        exported.add(name)
        ranks[path], alphas[path] = r, float(m.scale) * r
        targets.append(path)
    return targets


def export_hf_peft(model: nn.Module, directory: str | Path, naming: str | None = None,
                   base_name: str | None = None) -> dict[str, Any]:
    """Write the LoRA-family part of ``model`` in Hugging Face PEFT's LoRA format (``adapter_config.json`` +
    ``adapter_model.safetensors``, keys ``base_model.model.<module>.lora_A.weight``), exactly: per-module ranks in
    ``rank_pattern`` and ``alpha_pattern`` with alpha / r = our ``scale``. Module names are mamba_ssm's (also HF
    Mamba's); ``naming="hf"`` names the LM embedding ``backbone.embeddings``. Vim's task head is saved as
    ``modules_to_save``. Returns ``{"config", "left_out": {method: reason}, "tensors"}``."""
    from safetensors.torch import save_file

    if getattr(model, "peft_config", None) is None:
        raise ConfigError("export_hf_peft: the model has no PEFT methods (plain or already merged)")
    naming = naming or getattr(model, "base_format", None) or "mamba_ssm"
    left_out: dict[str, str] = {}
    exported: set[str] = set()
    tensors: dict[str, Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for path, parts in _linear_parts(model, left_out, exported).items():
        A, B, scale = _combine(parts)
        tensors[f"base_model.model.{path}.lora_A.weight"] = A
        tensors[f"base_model.model.{path}.lora_B.weight"] = B
        ranks[path], alphas[path] = A.shape[0], scale * A.shape[0]
    targets = sorted(ranks) + _model_level(model, naming, tensors, ranks, alphas, left_out, exported)
    for name in model.peft_config.methods:  # e.g. partial tuning in unfreeze mode: base tensors, no module
        if name not in exported:
            left_out.setdefault(name, _WHY_NOT.get(name, _NO_LORA))
    save = None
    if model.kind == "vim" and model.head.weight.requires_grad:  # the task head is trained: ship it
        save = ["head"]
        tensors["base_model.model.head.weight"] = model.head.weight.detach()
        tensors["base_model.model.head.bias"] = model.head.bias.detach()
    if not targets:
        raise ConfigError(f"export_hf_peft: none of {', '.join(model.peft_config.methods)} can be written as "
                          f"PEFT LoRA ({'; '.join(f'{k}: {v}' for k, v in left_out.items())})")
    r0 = max(set(ranks.values()), key=list(ranks.values()).count)
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_name, "revision": None,
        "r": r0, "lora_alpha": next(alphas[p] for p in targets if ranks[p] == r0),
        "rank_pattern": ranks, "alpha_pattern": alphas, "target_modules": targets,
        "lora_dropout": 0.0, "bias": "none", "use_dora": False, "use_rslora": False, "fan_in_fan_out": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": save,
        "layers_to_transform": None, "layers_pattern": None,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(directory / HF_WEIGHTS),
              metadata={"format": "pt"})
    (directory / HF_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (directory / "README.md").write_text(_readme(model, left_out))
    return {"config": config, "left_out": left_out, "tensors": len(tensors)}


def _readme(model: nn.Module, left_out: dict[str, str]) -> str:
    lines = ["# hybridsearch adapters in Hugging Face PEFT format", "",
             f"LoRA-family methods of a {'Vision Mamba' if model.kind == 'vim' else 'Mamba LM'} hybrid, written "
             "exactly: `(lora_alpha / r) * lora_B @ lora_A` equals hybridsearch's `scale * up @ down` per module "
             "(row-slice LoRAs such as LoRAp(X) have zero rows in `lora_B`; several methods on one module are "
             "stacked along the rank). Dropout is training-only and not carried.", "",
             "PEFT's guard against `out_proj` / `conv1d` LoRA on transformers' Mamba (fused kernels skip it) may "
             "refuse `out_proj` targets; the weights are exact for a plain PyTorch forward.", ""]
    if left_out:
        lines += ["## Left out (keep the hybridsearch adapters folder for these)", ""]
        lines += [f"- `{k}`: {v}" for k, v in sorted(left_out.items())]
        lines.append("")
    return "\n".join(lines)
