"""Saved adapters on a base checkpoint: apply them, optionally fold them into its weights, and write the result in
the base's own format.

* ``apply_adapters(base, adapters_dir, merge=False)``: the base (registered name, hustvl ``.pth``, mamba_ssm or
  HF directory) with the adapters of ``save_adapters`` / ``export --retrain`` loaded; ``merge`` folds them in
  (``merge_peft``, strict: methods that change the architecture are refused by name).
* ``write_model(model, out)``: a plain (or merged) model as a checkpoint of the base's format: Vim -> hustvl
  ``{"model": state_dict}`` file, LM -> mamba_ssm or HF directory, as the base was. A model that still carries
  methods is written as a bundle directory: the base checkpoint (``base.pth`` or ``base/``) beside the adapter
  files; ``load_model`` reads either.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models import MODELS, build, checkpoint_path, create_model
from ..models.checkpoint import read_config_json, save_mamba, save_vim
from ..peft import META_FILE, load_adapters, merge_peft, save_adapters
from ..safeio import load_json

FORMATS = ("hustvl", "mamba_ssm", "hf")
MAX_META_BYTES = 1 << 20  # adapter_meta.json: an architecture, counts and a few notes
KIND_FORMATS = {"vim": ("hustvl",), "lm": ("mamba_ssm", "hf")}  # per model kind; the first is the default
BUNDLE_BASE = {"vim": "base.pth", "lm": "base"}
CHECKPOINT_SUFFIX = {"vim": ".pth", "lm": ""}  # a Vim checkpoint is one file, an LM one a directory


# -- formats ---------------------------------------------------------------------------------------------------
def base_format(base: str | Path) -> str:
    """``hustvl`` (Vim file), ``mamba_ssm`` or ``hf`` (LM directory) for a checkpoint path, Hub id or registered
    name."""
    name = str(base)
    if name in MODELS:
        spec = MODELS.get(name)
        if spec.checkpoint is None or len(KIND_FORMATS[spec.kind]) == 1:
            return KIND_FORMATS[spec.kind][0]
        return base_format(spec.checkpoint())
    path = checkpoint_path(name)  # a Hub id: its snapshot in the local cache
    if path.is_dir():  # transformers' configs name their model_type (converted -hf ones carry d_model too)
        return "hf" if "model_type" in read_config_json(path / "config.json") else "mamba_ssm"
    return "hustvl"


def read_adapter_meta(adapters_dir: str | Path) -> dict[str, Any]:
    path = Path(adapters_dir) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; expected a folder written by save_adapters or "
                              "`hybridsearch export --retrain` (OUT/adapters/TASK)")
    meta = load_json(path, error=CheckpointError, what="adapter metadata", max_bytes=MAX_META_BYTES)
    if not isinstance(meta, dict) or meta.get("kind") not in ("vim", "lm") \
            or not isinstance(meta.get("architecture"), dict):
        raise CheckpointError(f"{path}: not adapter metadata (needs 'kind' vim|lm and an 'architecture' mapping)")
    return meta


def _check_architecture(model: nn.Module, meta: dict[str, Any], base: str, adapters_dir: Path) -> None:
    """The base must have the tensor shapes of the model the adapters were trained on (the task head aside). The
    metadata is compared with the base's own config, never built: its values come from a file."""
    if model.kind != meta["kind"]:
        raise CheckpointError(f"{base}: a {model.kind} model, but the adapters in {adapters_dir} are for a "
                              f"{meta['kind']} model")
    mine, theirs = model.cfg.to_dict(), meta["architecture"]
    unknown = sorted(map(str, set(theirs) - set(mine))) if isinstance(theirs, dict) else None
    if unknown is None or unknown:
        raise CheckpointError(f"{adapters_dir}: bad architecture in adapter metadata (keys allowed: "
                              f"{', '.join(sorted(mine))}{'; unknown: ' + ', '.join(unknown) if unknown else ''})")
    have, want = _shapes(mine, model.kind), _shapes({**mine, **theirs}, model.kind)
    diff = [f"{k} {have[k]!r} vs {want[k]!r}" for k in have if have[k] != want[k]]
    if diff:
        raise CheckpointError(f"{base}: architecture does not match the adapters in {adapters_dir} "
                              f"(base vs adapters: {'; '.join(diff[:5])}{' ...' if len(diff) > 5 else ''})")


def _shapes(cfg: dict[str, Any], kind: str) -> dict[str, Any]:
    """The config values that decide tensor shapes, resolved (a default dt_rank, the LM's padded vocabulary);
    the head (``num_classes``) and training-only settings are left out."""
    d = {k: v for k, v in cfg.items() if k not in ("num_classes", "drop_path_rate", "eps")}
    model = d.get("d_model")
    d["dt_rank"] = d.get("dt_rank") or (math.ceil(model / 16) if isinstance(model, int) else None)
    if kind == "lm":
        m, v = d.pop("pad_vocab_size_multiple", 1), d.get("vocab_size")
        d["vocab_size"] = math.ceil(v / m) * m if isinstance(v, int) and isinstance(m, int) and m > 0 else v
    return d


# -- apply -----------------------------------------------------------------------------------------------------
def apply_adapters(base: str | Path, adapters_dir: str | Path, merge: bool = False) -> nn.Module:
    """The base model with the saved adapters loaded (eval mode); ``merge`` folds them into the base weights."""
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


def _format_of(model: nn.Module, fmt: str | None) -> str:
    allowed = KIND_FORMATS[model.kind]
    fmt = fmt or getattr(model, "base_format", None) or allowed[0]
    if fmt not in allowed:
        raise ConfigError(f"checkpoint format {fmt!r} does not fit a {model.kind} model; allowed: {', '.join(allowed)}")
    return fmt


def _plain(model: nn.Module) -> nn.Module:
    """The model's base architecture with its current base tensors (every PEFT method left out)."""
    if getattr(model, "peft_config", None) is None:
        return model
    sd = {k: v.detach() for k, v in model.state_dict().items() if "peft" not in k.split(".")}
    plain = build(model.cfg, device="meta")
    plain.load_state_dict(sd, assign=True)
    return plain


def _write_plain(model: nn.Module, out: Path, fmt: str) -> Path:
    return save_vim(model, out) if fmt == "hustvl" else save_mamba(model, out, fmt)


def write_model(model: nn.Module, out: str | Path, fmt: str | None = None) -> Path:
    """Write ``model`` in its base's format (``fmt`` overrides: hustvl, mamba_ssm, hf).

    A plain or fully merged model becomes an ordinary checkpoint that ``create_model(out)`` loads. A model that
    still carries PEFT methods becomes a bundle directory ``out`` (base checkpoint + adapter files; ``load_model``).
    """
    out, fmt = Path(out), _format_of(model, fmt)
    if getattr(model, "peft_config", None) is None:
        return _write_plain(model, out, fmt)
    out.mkdir(parents=True, exist_ok=True)
    _write_plain(_plain(model), out / BUNDLE_BASE[model.kind], fmt)
    save_adapters(model, out, extra_meta={"bundle": {"base": BUNDLE_BASE[model.kind], "format": fmt}})
    return out


def load_model(path: str | Path) -> nn.Module:
    """A checkpoint written by ``write_model``: plain (``create_model``) or a bundle (base + adapters)."""
    path = Path(path)
    meta_bundle = read_adapter_meta(path).get("bundle") if (path / "adapter_meta.json").is_file() else None
    if meta_bundle is None:
        return create_model(path).eval()
    return apply_adapters(path / meta_bundle["base"], path)
