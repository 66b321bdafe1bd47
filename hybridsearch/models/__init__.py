"""Model registry and ``create_model`` (timm style).

``create_model(name_or_path, *, num_classes=None, checkpoint=None)``:
* a registered name builds that architecture (random init), loading ``checkpoint`` when given, or the
  bundled checkpoint of a pretrained proxy;
* a directory with ``config.json`` (mamba_ssm or HF layout) builds the Mamba LM from it (Mamba-1, or Mamba-2:
  ``mamba2.py``, ``mamba2_checkpoint.py``) and loads its weights;
* a Vim ``.pth`` / ``.safetensors`` file builds the Vim its tensor shapes describe and loads it;
* a Hugging Face Hub id (``state-spaces/mamba-130m-hf``) loads its snapshot from the local cache (``hub.py``),
  never downloading;
* a transformers ``MambaForCausalLM``, its ``MambaConfig`` or its state dict is converted exactly
  (``transformers_interop.py``), and so are ``Mamba2ForCausalLM`` and its ``Mamba2Config``.

``device="meta"`` builds the architecture only: a directory's ``config.json`` is all that is read, a Vim file's
shapes come from its header (safetensors) or a memory map (zip torch files) without reading the weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..registry import Registry
from . import checkpoint as ckpt
from .hub import cached_snapshot, is_hub_id
from .mamba2 import Mamba2Config, Mamba2LM
from .mamba2_checkpoint import check_head, is_mamba2_object, lm_config_from_json, mamba2_lm_from_object
from .mamba_lm import MambaConfig, MambaLM
from .transformers_interop import mamba_lm_from_object
from .vim import VimConfig, VisionMamba

LMConfig = MambaConfig | Mamba2Config  # the config of a Mamba LM of either layer type


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "vim" or "lm" (a Mamba-1 or Mamba-2 LM)
    config: VimConfig | MambaConfig | Mamba2Config
    description: str
    checkpoint: Callable[[], Path] | None = None  # bundled weights (proxies)


MODELS: Registry[ModelSpec] = Registry("model")


def _vim(d: int, desc: str) -> ModelSpec:
    return ModelSpec("vim", VimConfig(d_model=d, depth=24, img_size=224, patch_size=16), desc)


def _lm(d: int, n: int, desc: str) -> ModelSpec:
    return ModelSpec("lm", MambaConfig(d_model=d, n_layer=n, vocab_size=50277), desc)


MODELS.register("vim-tiny", _vim(192, "Vim-T (hustvl Vim-tiny-midclstok layout)"))
MODELS.register("vim-small", _vim(384, "Vim-S (hustvl Vim-small-midclstok layout)"))
MODELS.register("vim-base", _vim(768, "Vim-B (hustvl Vim-base-midclstok layout)"))
ASSETS = Path(__file__).resolve().parent.parent / "assets"  # bundled proxy weights


def _asset(name: str, rebuild: str) -> Callable[[], Path]:
    def path() -> Path:
        p = ASSETS / name
        if not p.exists():
            raise CheckpointError(f"{p}: bundled checkpoint missing; rebuild it with `{rebuild}`")
        return p

    return path


MODELS.register("vim-proxy", ModelSpec(
    "vim", VimConfig(d_model=64, depth=4, img_size=32, patch_size=8, d_state=8, num_classes=10, drop_path_rate=0.0),
    "4-layer Vim (d 64, N 8, 32x32, patch 8) pretrained on Fashion-MNIST; bundled",
    _asset("vim-proxy.pth", "hybridsearch pretrain vim-proxy"),
))
MODELS.register("mamba-proxy", ModelSpec(
    "lm", MambaConfig(d_model=128, n_layer=4, vocab_size=258, d_state=16, pad_vocab_size_multiple=8),
    "4-layer byte-level Mamba LM (d 128, N 16, vocab 258 -> 264) pretrained on WordNet glosses; bundled",
    _asset("mamba-proxy", "hybridsearch pretrain mamba-proxy"),
))
MODELS.register("mamba2-proxy", ModelSpec(
    "lm", Mamba2Config(d_model=128, n_layer=4, vocab_size=258, d_state=32, headdim=32, pad_vocab_size_multiple=8),
    "4-layer byte-level Mamba-2 LM (d 128, 8 heads of 32, N 32, vocab 258 -> 264) pretrained on WordNet glosses "
    "like mamba-proxy; bundled",
    _asset("mamba2-proxy", "hybridsearch pretrain mamba2-proxy"),
))
MODELS.register("mamba-130m", _lm(768, 24, "state-spaces/mamba-130m"))
MODELS.register("mamba-370m", _lm(1024, 48, "state-spaces/mamba-370m"))
MODELS.register("mamba-790m", _lm(1536, 48, "state-spaces/mamba-790m"))
MODELS.register("mamba-1.4b", _lm(2048, 48, "state-spaces/mamba-1.4b"))
MODELS.register("mamba-2.8b", _lm(2560, 64, "state-spaces/mamba-2.8b"))


def _lm2(d: int, n: int, desc: str) -> ModelSpec:
    """state-spaces' Mamba-2 LMs: ``ssm_cfg {"layer": "Mamba2"}`` with mamba_ssm's defaults (d_state 128, headdim
    64, expand 2, ngroups 1, chunk 256), vocab 50277 padded to a multiple of 16 (50288), tied head."""
    return ModelSpec("lm", Mamba2Config(d_model=d, n_layer=n, vocab_size=50277, pad_vocab_size_multiple=16), desc)


MODELS.register("mamba2-130m", _lm2(768, 24, "state-spaces/mamba2-130m (Mamba-2, SSD)"))
MODELS.register("mamba2-370m", _lm2(1024, 48, "state-spaces/mamba2-370m (Mamba-2, SSD)"))
MODELS.register("mamba2-780m", _lm2(1536, 48, "state-spaces/mamba2-780m (Mamba-2, SSD)"))
MODELS.register("mamba2-1.3b", _lm2(2048, 48, "state-spaces/mamba2-1.3b (Mamba-2, SSD)"))
MODELS.register("mamba2-2.7b", _lm2(2560, 64, "state-spaces/mamba2-2.7b (Mamba-2, SSD)"))


_ARCHITECTURES: dict[type, type[nn.Module]] = {VimConfig: VisionMamba, MambaConfig: MambaLM, Mamba2Config: Mamba2LM}


def build(config: VimConfig | LMConfig, device: str | torch.device | None = None) -> nn.Module:
    """Build an architecture from its config (``device="meta"`` allocates nothing)."""
    with torch.device(device or "cpu"):
        return _ARCHITECTURES[type(config)](config)


def _with_classes(cfg, num_classes: int | None):
    if num_classes is None or not isinstance(cfg, VimConfig):
        return cfg
    return replace(cfg, num_classes=num_classes)


def _is_meta(device: str | torch.device | None) -> bool:
    return device is not None and torch.device(device).type == "meta"


def _load_vim(cfg: VimConfig, path: Path, num_classes: int | None, device=None) -> nn.Module:
    sd = ckpt.read_state_dict(path, meta=_is_meta(device))  # on meta: shapes only, the weights stay on disk
    # an explicit class count means a new task: a fresh (zero) head, as MambaPEFT never loads the pretrained head;
    # without one the checkpoint's own head is loaded (deployment of a fine-tuned model)
    keep_head = "head.weight" in sd and num_classes is None
    if keep_head:
        cfg = replace(cfg, num_classes=sd["head.weight"].shape[0])
    model = build(_with_classes(cfg, num_classes), device)
    ckpt.load_into(model, sd, str(path), ignore=() if keep_head else ("head.",))
    return model


def _load_lm(cfg: LMConfig, path: Path, device=None) -> nn.Module:
    model = build(cfg, device)
    if _is_meta(device):  # the architecture only (exact counts): config.json is all that is read
        return model
    if path.is_dir():
        sd, source = ckpt.read_lm_weights(path)
    else:
        sd, source = ckpt.normalize_lm_keys(ckpt.read_state_dict(path)), path
    if isinstance(cfg, Mamba2Config):
        check_head(cfg, sd, str(source))
    ckpt.load_into(model, sd, str(source))
    return model


def _lm_config_of(directory: Path) -> LMConfig:
    if not (directory / "config.json").exists():
        raise CheckpointError(f"{directory}: directory has no config.json (expected a mamba_ssm or HF checkpoint)")
    return lm_config_from_json(directory / "config.json")


def checkpoint_path(name: str | Path) -> Path | None:
    """Where a name that is not registered lives: an existing path as it is, a Hugging Face Hub id
    (``ORG/NAME``) as its snapshot in the local cache (never downloaded); None for a registered name."""
    name = str(name)
    if name in MODELS:
        return None
    path = Path(name)
    if path.exists() or not is_hub_id(name):
        return path
    return cached_snapshot(name)


def create_model(
    name_or_path: str | Path | object,
    *,
    num_classes: int | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    pretrained: bool = True,
) -> nn.Module:
    """Build a Vim or Mamba LM by registered name, checkpoint directory, Vim checkpoint file or Hugging Face Hub
    id (from the local cache), or convert a transformers ``MambaForCausalLM`` / ``MambaConfig`` / state dict or
    ``Mamba2ForCausalLM`` / ``Mamba2Config``.

    Vim takes images (B, 3, H, W) and returns logits (B, num_classes); the LM takes token ids (B, L) and
    returns logits (B, L, vocab). ``device="meta"`` builds the architecture only (for exact counting).
    ``pretrained=False`` skips the bundled weights of a proxy model.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        if checkpoint is not None:
            raise CheckpointError("create_model: checkpoint= goes with a registered name, not with an object")
        if is_mamba2_object(name_or_path):
            return mamba2_lm_from_object(name_or_path, device)
        return mamba_lm_from_object(name_or_path, device)
    name = str(name_or_path)
    meta = _is_meta(device)
    if name in MODELS:
        spec = MODELS.get(name)
        if checkpoint is None and spec.checkpoint is not None and pretrained and not meta:
            checkpoint = spec.checkpoint()
        if checkpoint is None or (meta and spec.kind == "vim"):
            return build(_with_classes(spec.config, num_classes), device)
        path = checkpoint_path(checkpoint) or Path(checkpoint)
        if spec.kind == "vim":
            return _load_vim(spec.config, path, num_classes, device)
        return _load_lm(_lm_config_of(path) if path.is_dir() else spec.config, path, device)
    path = checkpoint_path(name)
    if path.is_dir():
        return _load_lm(_lm_config_of(path), path, device)
    if path.is_file():
        cfg = ckpt.vim_config_from_state_dict(ckpt.read_state_dict(path, meta=True), str(path))
        return _load_vim(cfg, path, num_classes, device)
    raise CheckpointError(
        f"{name!r} is neither a registered model nor an existing checkpoint path; "
        f"models: {', '.join(MODELS.names())}"
    )


def model_config(name_or_path: str | Path, num_classes: int | None = None) -> VimConfig | LMConfig:
    """The architecture config of a name or checkpoint, without loading weights where avoidable."""
    name = str(name_or_path)
    if name in MODELS:
        return _with_classes(MODELS.get(name).config, num_classes)
    path = checkpoint_path(name)
    if path.is_dir():
        return _lm_config_of(path)
    return _with_classes(ckpt.vim_config_from_state_dict(ckpt.read_state_dict(path, meta=True), name), num_classes)


__all__ = ["ASSETS", "MODELS", "LMConfig", "Mamba2Config", "Mamba2LM", "MambaConfig", "MambaLM", "ModelSpec",
           "VimConfig", "VisionMamba", "build", "checkpoint_path", "create_model", "model_config"]
