"""A hybrid in Hugging Face PEFT's LoRA format, loadable by the real library and exact.

``export_hf_peft(model, DIR)`` writes

* ``DIR/adapter_config.json`` + ``DIR/adapter_model.safetensors``: the LoRAs that PEFT expresses *and* the
  target model applies through the module's call. On transformers' ``MambaForCausalLM`` those are in_proj
  (LoRA(in_proj), LoRAp(X), LoRAp(Z)), x_proj (LoRA(x_proj), LoRAp(d/B/C)) and the token embedding (LoRA(embed));
  on hybridsearch's Vim the patch embedding, with the trained head as ``modules_to_save``;
* ``DIR/base/`` (LM, transformers layout) or ``DIR/base.pth`` (Vim, hustvl layout): the base with every other
  foldable method merged exactly. PEFT refuses ``out_proj`` / ``conv1d`` LoRAs on Mamba models, transformers reads
  ``dt_proj.weight`` directly (a PEFT LoRA there is silently ignored), our Vim mixer reads all its weights
  directly, DoRA differs from PEFT's ``use_dora`` and partial tuning is no LoRA: all of those go into the base.
  ``base_model_name_or_path`` is its absolute path, so ``AutoPeftModelForCausalLM.from_pretrained(DIR)`` loads
  the LM from anywhere;
* ``DIR/README.md``: what went where, and what was left out (methods that change the architecture).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.checkpoint import save_mamba, save_vim
from ..peft import merge_peft
from ..peft.hosts import hosts
from ..peft.lora import EmbeddingLora, LinearLora, PatchEmbedLora
from .bundle import BUNDLE_BASE, _plain

HF_CONFIG, HF_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# mixer weights that transformers' Mamba applies through the module's call (so a PEFT LoRA there takes effect)
_CALLED = ("in_proj.weight", "x_proj.weight")
_MERGED_WHY = {
    "out_proj.weight": "PEFT refuses LoRA on out_proj of Mamba models (transformers' fused kernels would skip it)",
    "dt_proj.weight": "transformers' Mamba reads dt_proj.weight directly, so a PEFT LoRA there would be ignored",
    "vim": "hybridsearch's Vim mixer reads its weights directly, so a PEFT LoRA there would be ignored",
    "dora": "DoRA normalises each input column (MambaPEFT); PEFT's use_dora normalises each output row",
    "partial": "tunes a base tensor directly (partial tuning): no PEFT LoRA equivalent",
    "sdt": "sparse dimension tuning changes selected entries of A_log and x_proj directly: no PEFT LoRA "
           "equivalent, folded exactly",
}
_LEFT_OUT_WHY = {
    "parallel_adapter": "ParallelAdapter has a ReLU between its matrices: neither a LoRA nor foldable",
    "prompt": "tokens added to the input sequence: PEFT's prompt methods feed attention, which Mamba has not",
    "affix": "tokens inside each scan: no PEFT equivalent for a state-space scan, and not foldable",
    "additional_scan": "extra SSM states change the architecture: not foldable",
    "state_offset": "adds C_t . h' to the scan's output: a full E x E map of the conv output through z's gate, "
                    "no PEFT equivalent and not foldable",
    "output_offset": "adds y' silu(z_t) to the scan's output, input-dependent through z: no PEFT equivalent and "
                     "not foldable",
    "init_state": "a trained initial scan state: no PEFT equivalent, and its effect decays input-dependently, so "
                  "not foldable",
}


def _route(model: nn.Module, module: nn.Module) -> tuple[str, str]:
    """("adapter" | "merged" | "left_out", why) for one method module."""
    if not module.mergeable and not isinstance(module, EmbeddingLora):
        return "left_out", _LEFT_OUT_WHY.get(module.method, "cannot be folded into the base weights")
    if isinstance(module, (PatchEmbedLora, EmbeddingLora)):
        return "adapter", ""
    if not isinstance(module, LinearLora):
        return "merged", _MERGED_WHY.get(module.method, _MERGED_WHY["partial"])
    if module.dora:
        return "merged", _MERGED_WHY["dora"]
    if model.kind == "vim":
        return "merged", _MERGED_WHY["vim"]
    if module.target in _CALLED:
        return "adapter", ""
    return "merged", _MERGED_WHY[module.target]


def _routes(model: nn.Module) -> dict[str, tuple[str, str]]:
    """Per method of the hybrid: where it goes. Unfreeze-mode partial tuning has no module: its trained tensors
    are the model's own, so the base carries it."""
    routes = {name: _route(model, m) for host in hosts(model) for name, m in host.peft.items()}
    for name in model.peft_config.methods:
        routes.setdefault(name, ("merged", "trained in place (unfreeze mode): the base's tensors carry it"))
    return routes


def _linear_parts(model: nn.Module, adapter: set[str]) -> dict[str, list[tuple[Tensor, Tensor, float]]]:
    """Per target module path: (A (r, in), B (out, r) with zero rows outside the method's row block, scale)."""
    parts: dict[str, list[tuple[Tensor, Tensor, float]]] = {}
    for i, mixer in enumerate(model.mixers):
        for name, m in mixer.peft.items():
            if name not in adapter or not isinstance(m, LinearLora):
                continue
            lr, weight = m.adapters["f"], mixer.param(m.target, "f")  # the LM has one direction
            B = weight.new_zeros(weight.shape[0], lr.up.weight.shape[1])
            B[m.rows] = lr.up.weight.detach()  # a row slice (LoRAp) is a full LoRA with zero rows: exact
            path = f"backbone.layers.{i}.mixer.{m.target.split('.')[0]}"
            parts.setdefault(path, []).append((lr.down.weight.detach(), B, float(m.scale)))
    return parts


def _combine(parts: list[tuple[Tensor, Tensor, float]]) -> tuple[Tensor, Tensor, float]:
    """Several LoRAs on one module as one: stacked ranks; scales folded into B unless they are all equal."""
    scales = {s for _, _, s in parts}
    common = scales.pop() if len(scales) == 1 else 1.0
    A = torch.cat([a for a, _, _ in parts], dim=0)
    B = torch.cat([b * (s / common) for _, b, s in parts], dim=1)
    return A, B, common


def _model_level(model: nn.Module, tensors: dict, ranks: dict, alphas: dict) -> None:
    """LoRA(embed): Vim's patch-embed conv (PEFT Conv2d LoRA) or the LM's token embedding (PEFT Embedding LoRA,
    transformers' name ``backbone.embeddings``)."""
    for m in model.peft.values():
        if isinstance(m, PatchEmbedLora):
            path, r = "patch_embed.proj", m.down.weight.shape[0]
            tensors[f"base_model.model.{path}.lora_A.weight"] = m.down.weight.detach()
            tensors[f"base_model.model.{path}.lora_B.weight"] = m.up.weight.detach()
        elif isinstance(m, EmbeddingLora):
            path, r = "backbone.embeddings", m.A.shape[1]
            tensors[f"base_model.model.{path}.lora_embedding_A"] = m.A.detach().t()  # (r, vocab)
            tensors[f"base_model.model.{path}.lora_embedding_B"] = m.B.detach().t()  # (d_model, r)
        else:
            continue
        ranks[path], alphas[path] = r, float(m.scale) * r


def _placeholder(model: nn.Module, tensors: dict, ranks: dict, alphas: dict) -> None:
    """Everything was merged: PEFT still needs one target, so a rank-1 LoRA whose B is zero (no change)."""
    if model.kind == "lm":
        path, w = "backbone.layers.0.mixer.in_proj", model.mixers[0].in_proj.weight
        A, B = w.new_zeros(1, w.shape[1]), w.new_zeros(w.shape[0], 1)
    else:
        path, w = "patch_embed.proj", model.patch_embed.proj.weight
        A, B = w.new_zeros(1, *w.shape[1:]), w.new_zeros(w.shape[0], 1, 1, 1)
    tensors[f"base_model.model.{path}.lora_A.weight"] = A
    tensors[f"base_model.model.{path}.lora_B.weight"] = B
    ranks[path], alphas[path] = 1, 1.0


def _merged_base(model: nn.Module, keep_out: set[str]) -> nn.Module:
    """A copy of the base with every foldable method not in ``keep_out`` merged exactly (each from the original
    tensors, as forward computes it), and nothing else attached."""
    work = copy.deepcopy(model)
    for host in hosts(work):
        for name in [n for n in host.peft if n in keep_out]:
            del host.peft[name]
    merge_peft(work, strict=False)  # the unfoldable ones stay attached; _plain drops them
    return _plain(work)


def export_hf_peft(model: nn.Module, directory: str | Path, base_name: str | None = None) -> dict[str, Any]:
    """Write ``model``'s hybrid as a Hugging Face PEFT LoRA adapter plus the base it goes on (module docstring),
    exactly: ``(lora_alpha / r) * lora_B @ lora_A`` equals the sum of our deltas on each target, per-module ranks
    in ``rank_pattern`` / ``alpha_pattern``. ``base_name`` (where the adapters came from) is recorded in the
    README. ``model`` is not changed. Returns ``{"config", "dir", "base", "adapter": [methods], "merged":
    {method: why}, "left_out": {method: why}, "tensors"}``."""
    from safetensors.torch import save_file

    if getattr(model, "peft_config", None) is None:
        raise ConfigError("export_hf_peft: the model has no PEFT methods (plain or already merged)")
    routes = _routes(model)
    adapter = {n for n, (r, _) in routes.items() if r == "adapter"}
    tensors: dict[str, Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for path, parts in _linear_parts(model, adapter).items():
        A, B, scale = _combine(parts)
        tensors[f"base_model.model.{path}.lora_A.weight"] = A
        tensors[f"base_model.model.{path}.lora_B.weight"] = B
        ranks[path], alphas[path] = A.shape[0], scale * A.shape[0]
    _model_level(model, tensors, ranks, alphas)
    if not ranks:
        _placeholder(model, tensors, ranks, alphas)
    save = None
    if model.kind == "vim" and model.head.weight.requires_grad:  # the task head is trained: ship it
        save = ["head"]
        tensors["base_model.model.head.weight"] = model.head.weight.detach()
        tensors["base_model.model.head.bias"] = model.head.bias.detach()

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = (directory / BUNDLE_BASE[model.kind]).resolve()
    plain = _merged_base(model, adapter)
    if model.kind == "lm":
        save_mamba(plain, base, "hf")  # transformers' layout: what AutoPeftModelForCausalLM loads
    else:
        save_vim(plain, base)
    r0 = max(set(ranks.values()), key=list(ranks.values()).count)
    targets = sorted(ranks)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM" if model.kind == "lm" else None,
        "base_model_name_or_path": str(base), "revision": None,
        "r": r0, "lora_alpha": next(alphas[p] for p in targets if ranks[p] == r0),
        "rank_pattern": ranks, "alpha_pattern": alphas, "target_modules": targets,
        "lora_dropout": 0.0, "bias": "none", "use_dora": False, "use_rslora": False, "fan_in_fan_out": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": save,
        "layers_to_transform": None, "layers_pattern": None,
    }
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(directory / HF_WEIGHTS),
              metadata={"format": "pt"})
    (directory / HF_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    result = {
        "config": config, "dir": str(directory), "base": str(base), "adapter": sorted(adapter),
        "merged": {n: why for n, (r, why) in sorted(routes.items()) if r == "merged"},
        "left_out": {n: why for n, (r, why) in sorted(routes.items()) if r == "left_out"},
        "tensors": len(tensors),
    }
    (directory / "README.md").write_text(_readme(model, result, base_name))
    return result


def _readme(model: nn.Module, result: dict[str, Any], base_name: str | None) -> str:
    lm = model.kind == "lm"
    load = (["```python", "from peft import AutoPeftModelForCausalLM", "",
             'model = AutoPeftModelForCausalLM.from_pretrained("THIS_FOLDER")  # loads base/ (its absolute path)',
             "```"] if lm else
            ["```python", "import hybridsearch as hs", "from peft import PeftModel", "",
             'model = PeftModel.from_pretrained(hs.create_model("THIS_FOLDER/base.pth"), "THIS_FOLDER")', "```"])
    lines = [f"# A hybridsearch {'Mamba LM' if lm else 'Vision Mamba'} hybrid in Hugging Face PEFT format", "",
             *( [f"Adapters applied to `{base_name}`.", ""] if base_name else []),
             *load, "",
             f"`{BUNDLE_BASE[model.kind]}` is the base with the methods below merged into it exactly; "
             "`adapter_model.safetensors` holds the rest as PEFT LoRA: `(lora_alpha / r) * lora_B @ lora_A` equals "
             "hybridsearch's `scale * up @ down` per module (row-slice LoRAs such as LoRAp(X) have zero rows in "
             "`lora_B`; several methods on one module are stacked along the rank). Dropout is training-only and "
             "not carried. After moving this folder, load `base` yourself and use `PeftModel.from_pretrained`.", "",
             "## In the adapter", ""]
    lines += [f"- `{n}`" for n in result["adapter"]] or ["- nothing: a zero rank-1 LoRA stands in, PEFT needs one"]
    lines += ["", "## Merged into the base", ""]
    lines += [f"- `{n}`: {why}" for n, why in result["merged"].items()] or ["- nothing"]
    if result["left_out"]:
        lines += ["", "## Left out (this folder does not reproduce them; keep the hybridsearch adapters)", ""]
        lines += [f"- `{n}`: {why}" for n, why in result["left_out"].items()]
    return "\n".join(lines) + "\n"
