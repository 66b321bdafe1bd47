"""Reading and writing checkpoints in the real formats, safely.

* Vim (hustvl): a torch file ``{"model": state_dict}``; keys may carry a ``module.`` prefix.
* mamba_ssm: a directory with ``config.json`` (``d_model``, ``n_layer``, ...) and ``pytorch_model.bin``.
* Hugging Face ``-hf``: a directory with ``config.json`` (``hidden_size``, ...) and ``model.safetensors``;
  the embedding is ``backbone.embeddings.weight`` (plural) and ``lm_head.weight`` may be absent (tied).

Pickles are loaded with ``weights_only=True`` only: a file that needs code to unpickle is refused.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .mamba_lm import MambaConfig
from .vim import VimConfig


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Load a flat state dict from ``.safetensors`` or a torch file (unwrapping ``{"model": ...}``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's first line is generic advice (with terminal escapes); the "Unsupported ..." line names the culprit
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unsupported" in ln), lines[0] if lines else type(e).__name__)
        raise CheckpointError(
            f"{path}: refused to load: the pickle needs code to run (only plain tensors are allowed): "
            f"{why.split('. Please')[0]}"
        ) from None
    except Exception as e:  # truncated or not a checkpoint at all
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def vim_config_from_state_dict(sd: dict[str, Tensor], path: str = "<state dict>") -> VimConfig:
    """Infer a Vim architecture from the tensor shapes of a hustvl-format state dict."""
    try:
        D, _, p, _ = sd["patch_embed.proj.weight"].shape
        n_tokens = sd["pos_embed"].shape[1]
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
        E, N = sd["layers.0.mixer.A_log"].shape
        dt_rank = sd["layers.0.mixer.dt_proj.weight"].shape[1]
        d_conv = sd["layers.0.mixer.conv1d.weight"].shape[-1]
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: not a Vim checkpoint (missing or malformed key {e})") from None
    side = math.isqrt(n_tokens - 1)
    num_classes = sd["head.weight"].shape[0] if "head.weight" in sd else 1000
    return VimConfig(
        d_model=D, depth=depth, img_size=side * p, patch_size=p, d_state=N, d_conv=d_conv,
        expand=E // D, dt_rank=dt_rank, num_classes=num_classes, in_chans=sd["patch_embed.proj.weight"].shape[1],
    )


def mamba_config_from_json(path: Path) -> MambaConfig:
    """Read mamba_ssm or HF ``config.json`` into a MambaConfig."""
    try:
        c = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read config ({e})") from None
    try:
        if "d_model" in c:  # mamba_ssm layout
            ssm = c.get("ssm_cfg") or {}
            return MambaConfig(
                d_model=c["d_model"], n_layer=c["n_layer"], vocab_size=c["vocab_size"],
                d_state=ssm.get("d_state", 16), d_conv=ssm.get("d_conv", 4), expand=ssm.get("expand", 2),
                pad_vocab_size_multiple=c.get("pad_vocab_size_multiple", 8),
            )
        return MambaConfig(  # HF MambaConfig layout; its vocab_size is already padded
            d_model=c["hidden_size"], n_layer=c["num_hidden_layers"], vocab_size=c["vocab_size"],
            d_state=c.get("state_size", 16), d_conv=c.get("conv_kernel", 4), expand=c.get("expand", 2),
            dt_rank=c.get("time_step_rank"), pad_vocab_size_multiple=1, eps=c.get("layer_norm_epsilon", 1e-5),
        )
    except KeyError as e:
        raise CheckpointError(f"{path}: missing key {e} (expected mamba_ssm or HF Mamba config.json)") from None


def find_weights(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin next to config.json")


def normalize_lm_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF -> mamba_ssm key names; restore the tied head when absent."""
    out = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in sd.items()}
    if "lm_head.weight" not in out and "backbone.embedding.weight" in out:
        out["lm_head.weight"] = out["backbone.embedding.weight"]
    return out


def load_into(model: nn.Module, sd: dict[str, Tensor], path: str, ignore: tuple[str, ...] = ()) -> None:
    """Strict load that reports every missing, unexpected and mis-shaped key at once."""
    own = model.state_dict()
    wanted = {k for k in own if not k.startswith(ignore)}
    given = {k for k in sd if not k.startswith(ignore)}
    missing, unexpected = sorted(wanted - given), sorted(given - wanted)
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(wanted & given)
        if sd[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:20])}{' ...' if len(unexpected) > 20 else ''}")
    if shapes:
        problems.append(f"shape mismatches: {'; '.join(shapes[:20])}")
    if problems:
        raise CheckpointError(f"{path}: does not match the model: " + " | ".join(problems))
    with torch.no_grad():
        for k in wanted:
            own[k].copy_(sd[k].to(own[k].dtype))


def save_vim(model: nn.Module, path: str | Path) -> Path:
    """Write ``{"model": state_dict}`` exactly like hustvl's releases."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"model": sd}, path)
    return path


def save_mamba(model: nn.Module, directory: str | Path, fmt: str = "mamba_ssm") -> Path:
    """Write a mamba_ssm (``config.json`` + ``pytorch_model.bin``) or HF (+ ``model.safetensors``) directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg: MambaConfig = model.cfg
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if fmt == "mamba_ssm":
        conf = {
            "d_model": cfg.d_model, "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size,
            "ssm_cfg": {"d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand},
            "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
            "pad_vocab_size_multiple": cfg.pad_vocab_size_multiple,
        }
        torch.save(sd, directory / "pytorch_model.bin")
    elif fmt == "hf":
        from safetensors.torch import save_file

        conf = {
            "architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layer, "intermediate_size": cfg.expand * cfg.d_model,
            "state_size": cfg.d_state, "conv_kernel": cfg.d_conv, "expand": cfg.expand,
            "time_step_rank": model.mixers[0].dt_rank, "vocab_size": cfg.padded_vocab, "use_bias": False,
            "use_conv_bias": True, "layer_norm_epsilon": cfg.eps, "residual_in_fp32": True, "hidden_act": "silu",
            "tie_word_embeddings": True,
        }
        sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in sd.items()}
        sd.pop("lm_head.weight", None)  # tied; safetensors refuses shared storage
        save_file(sd, str(directory / "model.safetensors"))
    else:
        raise ValueError(f"unknown Mamba checkpoint format {fmt!r}; allowed: mamba_ssm, hf")
    (directory / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
    return directory
