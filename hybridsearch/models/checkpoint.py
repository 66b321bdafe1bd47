"""Reading and writing checkpoints in the real formats, safely.

* Vim (hustvl): a torch file ``{"model": state_dict}``; keys may carry a ``module.`` prefix. The architecture
  comes from the tensor shapes; a shape no Vim has is refused naming the key.
* mamba_ssm: a directory with ``config.json`` (``d_model``, ``n_layer``, ``ssm_cfg``, ...) and
  ``pytorch_model.bin``.
* Hugging Face ``-hf``: a directory with ``config.json`` (``model_type`` ``mamba``, ``hidden_size``, ...) and
  ``model.safetensors`` (or shards listed by ``model.safetensors.index.json``); the embedding is
  ``backbone.embeddings.weight`` (plural) and ``lm_head.weight`` may be absent (tied). A folder with several
  weight copies loads only if they hold the same tensors.

Every key of a ``config.json`` is used, accepted as runtime-only, or refused with one line naming the file, the
key and the allowed values (``config_from_dict``). Pickles are loaded with ``weights_only=True`` only: a file that
needs code to unpickle is refused.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..safeio import load_json
from .mamba2 import Mamba2Config
from .mamba_lm import MambaConfig
from .vim import VimConfig

MAX_CONFIG_BYTES = 1024 * 1024  # a real config.json is about 1 KB
MAX_INDEX_BYTES = 16 * 1024 * 1024  # a shard index: one line per tensor (about 100 KB for a 64-layer Mamba)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _meta_state_dict(path: Path) -> dict:
    """Shapes only, as meta tensors: the safetensors header, or a zip torch file mapped (pages never read);
    a legacy torch file has no index and is read whole."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # a safetensors handle is not iterable
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in names}
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        sd = torch.load(path, map_location="cpu", weights_only=True)
    return _meta_tree(sd)


def _meta_tree(obj: object) -> object:
    if isinstance(obj, Tensor):
        return torch.empty(obj.shape, dtype=obj.dtype, device="meta")
    if isinstance(obj, dict):
        return {k: _meta_tree(v) for k, v in obj.items()}
    return obj


def read_state_dict(path: str | Path, *, meta: bool = False) -> dict[str, Tensor]:
    """Load a flat state dict from ``.safetensors`` or a torch file (unwrapping ``{"model": ...}``).

    ``meta=True``: the same keys and shapes as meta tensors, without reading the weights where the format
    allows (a safetensors header, a zip torch file mapped into memory)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        if meta:
            sd = _meta_state_dict(path)
        elif path.suffix == ".safetensors":
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
        why = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {why})") from None
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{path}: not a state dict of tensors (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in sd.items()}


# -- Vim: the architecture from the tensor shapes ----------------------------------------------------------------
MAX_LAYERS = 4096  # far beyond any Mamba or Vim (64 layers at most)


def _layer_count(sd: dict[str, Tensor], path: str) -> int:
    seen: set[int] = set()
    for k in sd:
        if k.startswith("layers."):
            part = k.split(".")[1]
            if not re.fullmatch(r"[0-9]{1,18}", part):
                raise CheckpointError(f"{path}: {k}: layer {part!r} is not a layer number (keys are layers.<i>.*)")
            seen.add(int(part))
    if not seen:
        raise CheckpointError(f"{path}: not a Vim checkpoint (no layers.<i>.* keys)")
    if seen != set(range(len(seen))) or len(seen) > MAX_LAYERS:
        shown = ", ".join(map(str, sorted(seen)[:8])) + (", ..." if len(seen) > 8 else "")
        raise CheckpointError(f"{path}: layers are numbered {shown}; expected 0 to n - 1 (at most {MAX_LAYERS:,})")
    return len(seen)


def vim_config_from_state_dict(sd: dict[str, Tensor], path: str = "<state dict>") -> VimConfig:
    """Infer a Vim architecture from the tensor shapes of a hustvl-format state dict; a shape no Vim has is
    refused naming the key, its shape and the expected one."""

    def shape(key: str, expect: str) -> tuple[int, ...]:
        if key not in sd:
            raise CheckpointError(f"{path}: not a Vim checkpoint (no {key})")
        s = tuple(sd[key].shape)
        if len(s) != expect.count(",") + 1 or min(s, default=0) < 1:
            raise CheckpointError(f"{path}: {key} has shape {s}; expected {expect}")
        return s

    def bad(key: str, expect: str) -> CheckpointError:
        return CheckpointError(f"{path}: {key} has shape {tuple(sd[key].shape)}; expected {expect}")

    D, C, p, p2 = shape("patch_embed.proj.weight", "(d_model, channels, patch, patch)")
    if p != p2:
        raise bad("patch_embed.proj.weight", "square patches (d_model, channels, patch, patch)")
    one, n_tokens, d = shape("pos_embed", "(1, 1 + patches, d_model)")
    if one != 1 or d != D:
        raise bad("pos_embed", f"(1, 1 + patches, d_model) with d_model {D}")
    side = math.isqrt(n_tokens - 1)
    if side < 1 or side * side != n_tokens - 1:
        raise CheckpointError(f"{path}: pos_embed holds {n_tokens} tokens; expected 1 + a square number of patches")
    depth = _layer_count(sd, path)
    E, N = shape("layers.0.mixer.A_log", "(expand * d_model, d_state)")
    if E % D:
        raise bad("layers.0.mixer.A_log", f"(expand * d_model, d_state) with d_model {D}")
    e, dt_rank = shape("layers.0.mixer.dt_proj.weight", "(d_inner, dt_rank)")
    e2, _, d_conv = shape("layers.0.mixer.conv1d.weight", "(d_inner, 1, d_conv)")
    if e != E or e2 != E:
        raise CheckpointError(f"{path}: layers.0.mixer: A_log has {E} channels, dt_proj {e}, conv1d {e2}; "
                              "expected the same d_inner")
    num_classes = shape("head.weight", "(num_classes, d_model)")[0] if "head.weight" in sd else 1000
    return VimConfig(
        d_model=D, depth=depth, img_size=side * p, patch_size=p, d_state=N, d_conv=d_conv,
        expand=E // D, dt_rank=dt_rank, num_classes=num_classes, in_chans=C,
    )


# -- Mamba LM: config.json ----------------------------------------------------------------------------------------
# Every key of a real config.json is used, accepted as runtime-only, or refused naming the key and the allowed
# values: a config that describes another architecture (Mamba-2 layers, attention layers, an MLP, LayerNorm,
# projection biases, an untied head, another model_type) never loads as Mamba-1.
_LIMITS = {"d_model": 65_536, "n_layer": MAX_LAYERS, "vocab_size": 2**24, "d_state": 4096, "d_conv": 1024,
           "expand": 64, "dt_rank": 65_536, "pad_vocab_size_multiple": 65_536, "d_inner": 2**22}
_LIMITS.update(hidden_size=_LIMITS["d_model"], num_hidden_layers=MAX_LAYERS, state_size=_LIMITS["d_state"],
               conv_kernel=_LIMITS["d_conv"], intermediate_size=_LIMITS["d_inner"])
# transformers' PretrainedConfig keys: generation defaults, bookkeeping and head settings the LM never reads
_RUNTIME = frozenset((
    "architectures", "auto_map", "torch_dtype", "dtype", "transformers_version", "_name_or_path", "_commit_hash",
    "_from_model_config", "_attn_implementation", "_attn_implementation_autoset", "use_cache", "bos_token_id",
    "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "return_dict", "output_hidden_states",
    "output_attentions", "torchscript", "use_bfloat16", "tf_legacy_loss", "pruned_heads", "chunk_size_feed_forward",
    "is_encoder_decoder", "is_decoder", "cross_attention_hidden_size", "add_cross_attention", "tie_encoder_decoder",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "finetuning_task", "id2label",
    "label2id", "num_labels", "tokenizer_class", "prefix", "task_specific_params", "problem_type",
    "gradient_checkpointing",
))
_SSM_KEYS = ("layer", "d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
             "dt_init_floor", "conv_bias", "bias", "use_fast_path")
_MAMBA_SSM_KEYS = ("d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx", "attn_cfg",
                   "rms_norm", "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings")
_HF_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "state_size", "conv_kernel", "expand",
            "intermediate_size", "time_step_rank", "use_bias", "use_conv_bias", "layer_norm_epsilon", "hidden_act",
            "residual_in_fp32", "tie_word_embeddings", "initializer_range", "rescale_prenorm_residual",
            "time_step_scale", "time_step_min", "time_step_max", "time_step_floor", "time_step_init_scheme",
            "use_cache", "use_mambapy", "use_associative_scan",
            # mamba_ssm keys the converted -hf configs kept: checked against the transformers keys
            "d_model", "n_layer", "d_inner", "ssm_cfg", "rms_norm", "fused_add_norm", "pad_vocab_size_multiple")
_REQUIRED = object()


def _show(v: object) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10**30:
        return f"an integer of {len(str(abs(v)))} digits"
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


class _Keys:
    """One mapping of a config.json (or its ``ssm_cfg``), read with messages naming the file and key path."""

    def __init__(self, data: dict, path: str, prefix: str = "") -> None:
        self.d, self.path, self.prefix = data, path, prefix

    def fail(self, key: str, msg: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {self.prefix}{key}: {msg}")

    def get(self, key: str, default: object) -> object:
        if key not in self.d:
            if default is _REQUIRED:
                raise self.fail(key, "required key is missing")
            return default
        return self.d[key]

    def int(self, key: str, default: object = _REQUIRED, lo: int = 1) -> int:
        v, hi = self.get(key, default), _LIMITS.get(key.rsplit(".", 1)[-1], 65_536)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(key, f"must be an integer between {lo:,} and {hi:,}, got {_show(v)}")
        return v

    def number(self, key: str, default: float, hi: float | None = None) -> float:
        v = self.get(key, default)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e300 and math.isfinite(v)
        if not ok or v <= 0 or (hi is not None and v >= hi):
            raise self.fail(key, f"must be a finite number > 0{f' and < {hi:g}' if hi else ''}, got {_show(v)}")
        return float(v)

    def only(self, key: str, default: object, allowed: tuple, why: str = "", note: str = "") -> object:
        """A key whose other values describe something this loader does not build."""
        v = self.get(key, default)
        if not any(v == a and type(v) is type(a) for a in allowed):
            shown = ", ".join("true" if a is True else "false" if a is False else str(a) for a in allowed)
            raise self.fail(key, f"{_show(v)} is not supported{f' ({why})' if why else ''}; allowed: {shown}{note}")
        return v

    def flag(self, key: str, default: bool) -> bool:
        return self.only(key, default, (True, False))  # runtime or initialisation only: either value is fine

    def rank(self, key: str) -> int | None:
        v = self.get(key, "auto")
        if v == "auto":
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= _LIMITS["dt_rank"]:
            raise self.fail(key, f"must be 'auto' or an integer between 1 and {_LIMITS['dt_rank']:,}, got {_show(v)}")
        return v

    def mapping(self, key: str) -> dict:
        v = self.get(key, {})
        v = {} if v is None else v
        if not isinstance(v, dict):
            raise self.fail(key, f"must be a mapping, got {type(v).__name__}")
        return v

    def no_other_keys(self, known: tuple[str, ...], runtime: frozenset = frozenset()) -> None:
        for k in self.d:
            if k not in known and k not in runtime:
                extra = " and transformers' runtime keys (use_cache, torch_dtype, ...)" if runtime else ""
                raise self.fail(str(k), f"unknown key; allowed: {', '.join(known)}{extra}")


def _ssm_cfg(raw: dict, path: str) -> dict:
    """mamba_ssm's ``Mamba`` keyword arguments: the shape-giving ones returned as given, the rest checked."""
    k = _Keys(raw, path, "ssm_cfg.")
    k.no_other_keys(_SSM_KEYS)
    k.only("layer", "Mamba1", ("Mamba1",), note=" (this loader builds Mamba-1 layers)")
    k.only("conv_bias", True, (True,), "no bias on conv1d")
    k.only("bias", False, (False,), "biases on in_proj / out_proj")
    for key in ("dt_min", "dt_max", "dt_scale", "dt_init_floor"):  # initialisation only: the weights replace it
        k.number(key, 1.0)
    k.only("dt_init", "random", ("random", "constant"))
    k.flag("use_fast_path", True)
    out: dict = {key: k.int(key) for key in ("d_state", "d_conv", "expand") if key in raw}
    if "dt_rank" in raw:
        out["dt_rank"] = k.rank("dt_rank")
    return out


def mamba_ssm_backbone_keys(k: _Keys) -> None:
    """The top-level keys of a mamba_ssm ``MambaConfig`` that every layer type shares (Mamba-1 and Mamba-2): one
    mixer per block, no MLP, no attention, RMSNorm, an fp32 residual stream."""
    k.no_other_keys(_MAMBA_SSM_KEYS, _RUNTIME)
    k.only("d_intermediate", 0, (0,), "an MLP after each mixer")
    attn = k.get("attn_layer_idx", [])
    if attn not in ([], None):
        raise k.fail("attn_layer_idx", f"{_show(attn)} is not supported (attention layers); allowed: []")
    k.mapping("attn_cfg")  # configures attention layers; there are none
    k.only("rms_norm", True, (True,), "LayerNorm")
    k.only("residual_in_fp32", True, (True,), "the residual stream is always kept in fp32 here")
    k.flag("fused_add_norm", True)


def _from_mamba_ssm(c: dict, path: str) -> MambaConfig:
    k = _Keys(c, path)
    mamba_ssm_backbone_keys(k)
    ssm = _ssm_cfg(k.mapping("ssm_cfg"), path)
    k.only("tie_embeddings", True, (True,), "an lm_head of its own")
    return MambaConfig(
        d_model=k.int("d_model"), n_layer=k.int("n_layer"), vocab_size=k.int("vocab_size"),
        d_state=ssm.get("d_state", 16), d_conv=ssm.get("d_conv", 4), expand=ssm.get("expand", 2),
        dt_rank=ssm.get("dt_rank"), pad_vocab_size_multiple=k.int("pad_vocab_size_multiple", 8),
    )


def _from_hf(c: dict, path: str) -> MambaConfig:
    k = _Keys(c, path)
    # first: another model_type (mamba2, falcon_mamba, ...) is named as such, not as its first unknown key
    k.only("model_type", "mamba", ("mamba",), note=" (transformers' MambaConfig; Mamba2, FalconMamba and "
                                                   "other model types are other architectures)")
    k.no_other_keys(_HF_KEYS, _RUNTIME)
    d_model, n_layer, expand = k.int("hidden_size"), k.int("num_hidden_layers"), k.int("expand", 2)
    cfg = MambaConfig(
        d_model=d_model, n_layer=n_layer, vocab_size=k.int("vocab_size"), d_state=k.int("state_size", 16),
        d_conv=k.int("conv_kernel", 4), expand=expand, dt_rank=k.rank("time_step_rank"),
        pad_vocab_size_multiple=1,  # transformers uses vocab_size as it is (the -hf configs hold it padded)
        eps=k.number("layer_norm_epsilon", 1e-5, hi=1.0),
    )
    k.only("use_bias", False, (False,), "biases on in_proj / out_proj")
    k.only("use_conv_bias", True, (True,), "no bias on conv1d")
    k.only("hidden_act", "silu", ("silu", "swish"))
    k.only("residual_in_fp32", True, (True,), "the residual stream is always kept in fp32 here")
    k.only("tie_word_embeddings", True, (True,), "an lm_head of its own")
    k.only("rms_norm", True, (True,), "LayerNorm")
    k.only("time_step_init_scheme", "random", ("random", "uniform", "constant"))
    for key in ("time_step_scale", "time_step_min", "time_step_max", "time_step_floor", "initializer_range"):
        k.number(key, 1.0)  # initialisation only: the weights replace it
    for key in ("rescale_prenorm_residual", "use_cache", "use_mambapy", "use_associative_scan", "fused_add_norm"):
        k.flag(key, False)
    k.int("pad_vocab_size_multiple", 1)  # mamba_ssm's padding, already applied to vocab_size; transformers ignores it
    same = {"d_model": ("hidden_size", d_model), "n_layer": ("num_hidden_layers", n_layer),
            "d_inner": ("expand * hidden_size", expand * d_model),
            "intermediate_size": ("expand * hidden_size", expand * d_model)}
    for key, (name, want) in same.items():
        if key in c and k.int(key) != want:
            raise k.fail(key, f"{c[key]} disagrees with {name} = {want}")
    ssm = _ssm_cfg(k.mapping("ssm_cfg"), path)
    ours = {"d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand, "dt_rank": cfg.dt_rank}
    for key, v in ssm.items():
        if v != ours[key] and not (key == "dt_rank" and None in (v, ours[key])):
            raise k.fail(f"ssm_cfg.{key}", f"{v} disagrees with the transformers keys ({ours[key]})")
    return cfg


def config_from_dict(c: dict, path: str = "<config>") -> MambaConfig:
    """A mamba_ssm (``d_model``, ``ssm_cfg``, ...) or transformers (``model_type``, ``hidden_size``, ...) config
    as a MambaConfig. A converted -hf config holds keys of both; its ``model_type`` makes it transformers'."""
    if "model_type" in c or ("hidden_size" in c and "d_model" not in c):
        return _from_hf(c, path)
    if "d_model" in c:
        return _from_mamba_ssm(c, path)
    raise CheckpointError(f"{path}: neither a mamba_ssm config.json (d_model, n_layer, vocab_size, ssm_cfg, ...) "
                          "nor a transformers Mamba one (model_type 'mamba', hidden_size, num_hidden_layers, ...)")


def read_config_json(path: Path) -> dict:
    """The mapping in a checkpoint's ``config.json``; any problem reading it is one line naming the file."""
    conf = load_json(path, error=CheckpointError, what="checkpoint config.json", max_bytes=MAX_CONFIG_BYTES)
    if not isinstance(conf, dict):
        raise CheckpointError(f"{path}: must be a JSON object (a mapping of keys), got {type(conf).__name__}")
    return conf


def mamba_config_from_json(path: Path) -> MambaConfig:
    """Read a mamba_ssm or Hugging Face ``config.json`` into a MambaConfig (rules: ``lm_config``)."""
    return config_from_dict(read_config_json(path), str(path))


def _weight_sources(directory: Path) -> list[Path]:
    return [directory / n for n in WEIGHT_FILES + tuple(n + ".index.json" for n in WEIGHT_FILES)
            if (directory / n).is_file()]


def find_weights(directory: Path) -> Path:
    found = _weight_sources(directory)
    if not found:
        raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin (nor a sharded "
                              "*.index.json) next to config.json")
    return found[0]


def _read_sharded(index: Path) -> dict[str, Tensor]:
    """A checkpoint that ``save_pretrained`` split into shards, as one state dict: the index's ``weight_map``
    names each tensor's shard, a plain file name in the same folder."""
    data = load_json(index, error=CheckpointError, what="weight index", max_bytes=MAX_INDEX_BYTES)
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wmap, dict) or not wmap or not all(isinstance(v, str) for v in wmap.values()):
        raise CheckpointError(f"{index}: not a weight index (needs a 'weight_map' of tensor names to shard files)")
    sd: dict[str, Tensor] = {}
    for shard in sorted(set(wmap.values())):
        if Path(shard).name != shard or shard in (".", ".."):
            raise CheckpointError(f"{index}: shard {_show(shard)} is not a file name in {index.parent}")
        sd.update(read_state_dict(index.parent / shard))
    if set(sd) != set(wmap):
        odd = sorted(set(sd) ^ set(wmap))
        raise CheckpointError(f"{index}: the shards do not hold the tensors the index lists ({odd[0]}"
                              f"{f' and {len(odd) - 1} more' if len(odd) > 1 else ''})")
    return sd


def read_lm_weights(directory: Path) -> tuple[dict[str, Tensor], Path]:
    """The (normalised) weights of an LM checkpoint folder and the file they came from (a sharded checkpoint:
    its index). A folder holding several copies (Hugging Face repositories often hold a safetensors and a torch
    one) loads only if they hold the same tensors."""
    found = _weight_sources(directory)
    if not found:
        find_weights(directory)  # raises the message
    sds = [normalize_lm_keys(_read_sharded(f) if f.name.endswith(".index.json") else read_state_dict(f))
           for f in found]
    for other, f in zip(sds[1:], found[1:]):
        if why := _disagreement(sds[0], other):
            raise CheckpointError(f"{directory}: {found[0].name} and {f.name} disagree ({why}); keep one of "
                                  "them, the loader cannot tell which is meant")
    return sds[0], found[0]


def _disagreement(a: dict[str, Tensor], b: dict[str, Tensor]) -> str | None:
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        return f"key {only[0]} is in one file only" + (f", and {len(only) - 1} more" if len(only) > 1 else "")
    for k in sorted(a):
        if a[k].shape != b[k].shape:
            return f"{k}: {tuple(a[k].shape)} vs {tuple(b[k].shape)}"
        if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k]):
            return f"{k} holds different values"
    return None


def normalize_lm_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF -> mamba_ssm key names; restore the tied head when absent."""
    out = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in sd.items()}
    if "lm_head.weight" not in out and "backbone.embedding.weight" in out:
        out["lm_head.weight"] = out["backbone.embedding.weight"]
    return out


def load_into(model: nn.Module, sd: dict[str, Tensor], path: str, ignore: tuple[str, ...] = ()) -> None:
    """Strict load that reports every missing, unexpected and mis-shaped key at once, and refuses a tensor that is
    not floating point or holds NaN / infinite values."""
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
    for k in sorted(wanted):  # a value no weight can have: refused here, not found as a NaN loss later
        t = sd[k]
        if not t.is_floating_point():
            raise CheckpointError(f"{path}: {k}: a {str(t.dtype).removeprefix('torch.')} tensor; weights are "
                                  "floating point (float32, float16, bfloat16, ...)")
        if t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: {k}: holds NaN or infinite values; every weight must be finite")
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


def _mamba1_config_json(model: nn.Module, fmt: str) -> dict:
    cfg: MambaConfig = model.cfg
    if fmt == "mamba_ssm":
        return {
            "d_model": cfg.d_model, "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size,
            "ssm_cfg": {"d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand,
                        **({"dt_rank": cfg.dt_rank} if cfg.dt_rank is not None else {})},
            "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
            "pad_vocab_size_multiple": cfg.pad_vocab_size_multiple,
        }
    if fmt == "hf":
        return {
            "architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layer, "intermediate_size": cfg.expand * cfg.d_model,
            "state_size": cfg.d_state, "conv_kernel": cfg.d_conv, "expand": cfg.expand,
            "time_step_rank": model.mixers[0].dt_rank, "vocab_size": cfg.padded_vocab, "use_bias": False,
            "use_conv_bias": True, "layer_norm_epsilon": cfg.eps, "residual_in_fp32": True, "hidden_act": "silu",
            "tie_word_embeddings": True,
        }
    raise ValueError(f"unknown Mamba checkpoint format {fmt!r}; allowed: mamba_ssm, hf")


def save_mamba(model: nn.Module, directory: str | Path, fmt: str = "mamba_ssm") -> Path:
    """Write a mamba_ssm (``config.json`` + ``pytorch_model.bin``) or HF (+ ``model.safetensors``) directory.
    A Mamba-2 LM is written as mamba_ssm's ``MambaLMHeadModel`` with ``Mamba2`` layers or as transformers'
    ``Mamba2ForCausalLM`` (``Mamba2Config.config_json``)."""
    directory = Path(directory)
    cfg = model.cfg
    # first: an unknown format, or a layout that cannot express the model, raises before anything is written
    conf = cfg.config_json(fmt) if isinstance(cfg, Mamba2Config) else _mamba1_config_json(model, fmt)
    directory.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if fmt == "hf":
        from safetensors.torch import save_file

        sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in sd.items()}
        if getattr(cfg, "tie_embeddings", True):
            sd.pop("lm_head.weight", None)  # tied; safetensors refuses shared storage (transformers re-ties it)
        save_file(sd, str(directory / "model.safetensors"))
    else:
        torch.save(sd, directory / "pytorch_model.bin")
    (directory / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
    return directory
