"""Deploying a searched hybrid: put saved adapters on a base checkpoint, optionally fold them into its weights, and
write the result in the base's own format; write the LoRA family in Hugging Face PEFT's adapter format too.

* ``apply_adapters(base, adapters_dir, merge=False)``: the base (registered name, hustvl ``.pth``, mamba_ssm or
  HF directory) with the adapters of ``save_adapters`` / ``export --retrain`` loaded; ``merge`` folds them in
  (``merge_peft``, strict: methods that change the architecture are refused by name).
* ``write_model(model, out)``: a plain (or merged) model as a checkpoint of the base's format: Vim -> hustvl
  ``{"model": state_dict}`` file, LM -> mamba_ssm or HF directory, as the base was. A model that still carries
  methods is written as a bundle directory: the base checkpoint (``base.pth`` or ``base/``) beside the adapter
  files; ``load_model`` reads either.
* ``export_hf_peft(model, directory)``: ``adapter_config.json`` + ``adapter_model.safetensors`` of the parts PEFT's
  LoRA can express exactly; a README note and the returned ``left_out`` name the rest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import CheckpointError, ConfigError

FORMATS = ("hustvl", "mamba_ssm", "hf")
BUNDLE_BASE = {"vim": "base.pth", "lm": "base"}
HF_CONFIG, HF_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_NO_LORA = "no PEFT LoRA equivalent"
_WHY_NOT = {
    "prompt": "tokens added to the input sequence: PEFT's prompt methods feed attention, which Mamba has not",
    "affix": "tokens inside each scan: no PEFT equivalent for a state-space scan",
    "additional_scan": "extra SSM states change the architecture",
    **{f"tune_{t}": "tunes a base tensor directly (partial tuning): no PEFT LoRA equivalent"
       for t in ("A", "D", "conv1d", "dt_bias", "cls_token", "pos_embed")},
}


# -- formats ---------------------------------------------------------------------------------------------------
def base_format(base: str | Path) -> str:
    """``hustvl`` (Vim file), ``mamba_ssm`` or ``hf`` (LM directory) for a checkpoint path or registered name."""
    from .models import MODELS

    name = str(base)
    if name in MODELS:
        spec = MODELS.get(name)
        if spec.kind == "vim":
            return "hustvl"
        return base_format(spec.checkpoint()) if spec.checkpoint is not None else "mamba_ssm"
    path = Path(name)
    if path.is_dir():
        try:
            conf = json.loads((path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: cannot read config.json ({e})") from None
        return "mamba_ssm" if "d_model" in conf else "hf"
    return "hustvl"


def read_adapter_meta(adapters_dir: str | Path) -> dict[str, Any]:
    from .peft.api import META_FILE

    path = Path(adapters_dir) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found; expected a folder written by save_adapters or "
                              "`hybridsearch export --retrain` (OUT/adapters/TASK)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read adapter metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("kind") not in ("vim", "lm") or "architecture" not in meta:
        raise CheckpointError(f"{path}: not adapter metadata (needs 'kind' vim|lm and 'architecture')")
    return meta


def _check_architecture(model: nn.Module, meta: dict[str, Any], base: str, adapters_dir: Path) -> None:
    """The base must have the tensor shapes of the model the adapters were trained on (the task head aside)."""
    from .models import MambaConfig, VimConfig, build

    if model.kind != meta["kind"]:
        raise CheckpointError(f"{base}: a {model.kind} model, but the adapters in {adapters_dir} are for a "
                              f"{meta['kind']} model")
    cls = VimConfig if meta["kind"] == "vim" else MambaConfig
    try:
        trained = build(cls(**meta["architecture"]), device="meta")
    except TypeError as e:
        raise CheckpointError(f"{adapters_dir}: bad architecture in adapter metadata ({e})") from None
    have = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("head.")}
    want = {k: tuple(v.shape) for k, v in trained.state_dict().items() if not k.startswith("head.")}
    diff = [f"{k} {have.get(k)} vs {v}" for k, v in want.items() if have.get(k) != v]
    diff += [f"{k} {v} vs absent" for k, v in have.items() if k not in want]
    if diff:
        raise CheckpointError(f"{base}: architecture does not match the adapters in {adapters_dir} "
                              f"(base vs adapters: {'; '.join(diff[:5])}{' ...' if len(diff) > 5 else ''})")


# -- apply -----------------------------------------------------------------------------------------------------
def apply_adapters(base: str | Path, adapters_dir: str | Path, merge: bool = False) -> nn.Module:
    """The base model with the saved adapters loaded (eval mode); ``merge`` folds them into the base weights."""
    from .models import MODELS, create_model
    from .peft import load_adapters, merge_peft

    if str(base) in MODELS and MODELS.get(str(base)).checkpoint is None:
        raise CheckpointError(f"base {str(base)!r} has no bundled weights: pass its pretrained checkpoint "
                              "(a hustvl .pth, or a mamba_ssm / HF directory)")
    adapters_dir = Path(adapters_dir)
    meta = read_adapter_meta(adapters_dir)
    num_classes = meta["architecture"].get("num_classes") if meta["kind"] == "vim" else None
    fmt = base_format(base)
    model = create_model(base, num_classes=num_classes)
    _check_architecture(model, meta, str(base), adapters_dir)
    load_adapters(model, adapters_dir)
    model.eval()
    if merge:
        merge_peft(model, strict=True)
        model.requires_grad_(False)
    model.base_format = fmt
    return model


def unmergeable(model: nn.Module) -> list[str]:
    """Methods of ``model`` that ``merge_peft`` cannot fold into the base weights exactly."""
    hosts = [model, *model.mixers]
    return sorted({m.method for h in hosts for m in h.peft.values() if not m.mergeable})


def _format_of(model: nn.Module, fmt: str | None) -> str:
    fmt = fmt or getattr(model, "base_format", None) or ("hustvl" if model.kind == "vim" else "mamba_ssm")
    allowed = ("hustvl",) if model.kind == "vim" else ("mamba_ssm", "hf")
    if fmt not in allowed:
        raise ConfigError(f"checkpoint format {fmt!r} does not fit a {model.kind} model; allowed: {', '.join(allowed)}")
    return fmt


def _plain(model: nn.Module) -> nn.Module:
    """The model's base architecture with its current base tensors (every PEFT method left out)."""
    from .models import build

    if getattr(model, "peft_config", None) is None:
        return model
    sd = {k: v.detach() for k, v in model.state_dict().items() if "peft" not in k.split(".")}
    plain = build(model.cfg, device="meta")
    plain.load_state_dict(sd, assign=True)
    return plain


def _write_plain(model: nn.Module, out: Path, fmt: str) -> Path:
    from .models.checkpoint import save_mamba, save_vim

    return save_vim(model, out) if fmt == "hustvl" else save_mamba(model, out, fmt)


def write_model(model: nn.Module, out: str | Path, fmt: str | None = None) -> Path:
    """Write ``model`` in its base's format (``fmt`` overrides: hustvl, mamba_ssm, hf).

    A plain or fully merged model becomes an ordinary checkpoint that ``create_model(out)`` loads. A model that
    still carries PEFT methods becomes a bundle directory ``out`` (base checkpoint + adapter files; ``load_model``).
    """
    from .peft import save_adapters

    out, fmt = Path(out), _format_of(model, fmt)
    if getattr(model, "peft_config", None) is None:
        return _write_plain(model, out, fmt)
    out.mkdir(parents=True, exist_ok=True)
    _write_plain(_plain(model), out / BUNDLE_BASE[model.kind], fmt)
    save_adapters(model, out, extra_meta={"bundle": {"base": BUNDLE_BASE[model.kind], "format": fmt}})
    return out


def load_model(path: str | Path) -> nn.Module:
    """A checkpoint written by ``write_model``: plain (``create_model``) or a bundle (base + adapters)."""
    from .models import create_model

    path = Path(path)
    meta_bundle = read_adapter_meta(path).get("bundle") if (path / "adapter_meta.json").is_file() else None
    if meta_bundle is None:
        return create_model(path).eval()
    return apply_adapters(path / meta_bundle["base"], path)


# -- Hugging Face PEFT ---------------------------------------------------------------------------------------------
def _left_out_reason(module: nn.Module) -> str | None:
    """Why a method module cannot be written as PEFT LoRA, or None when it can."""
    from .peft.lora import EmbeddingLora, LinearLora, PatchEmbedLora

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
    from .peft.lora import EmbeddingLora, PatchEmbedLora

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
