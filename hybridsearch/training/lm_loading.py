"""A Mamba LM and its tokenizer by registered name or checkpoint directory, optionally with saved adapters."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..data.tokenizers import ByteTokenizer, TextTokenizer, load_tokenizer
from ..errors import ConfigError
from ..models import LMConfig, checkpoint_path, create_model, model_config
from ..peft import load_adapters


def resolve_tokenizer(model: str | os.PathLike[str], tokenizer: str | os.PathLike[str] | None = None
                      ) -> TextTokenizer:
    """``tokenizer`` when given (``"byte"`` or a tokenizer.json / its folder); else the checkpoint folder's
    ``tokenizer.json``; else the byte tokenizer for a 258-token vocabulary (the proxies)."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    path = checkpoint_path(model) or Path(model)  # a Hub id: its snapshot in the local cache
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return load_tokenizer(path)
    cfg = model_config(model)
    if isinstance(cfg, LMConfig) and cfg.vocab_size == ByteTokenizer.VOCAB_SIZE:  # Mamba-1 or Mamba-2
        return ByteTokenizer()
    raise ConfigError(f"{model}: no tokenizer.json next to the checkpoint; pass a tokenizer (a GPT-NeoX "
                      "tokenizer.json for the state-spaces models, or 'byte')")


def load_lm(model: str | os.PathLike[str], *, tokenizer: str | os.PathLike[str] | None = None,
            adapters: str | os.PathLike[str] | None = None, device: str | torch.device | None = None,
            pretrained: bool = True) -> tuple[nn.Module, TextTokenizer]:
    """(model, tokenizer); ``adapters`` is a ``save_adapters`` folder applied and loaded on top."""
    net = create_model(model, device=device, pretrained=pretrained)
    if getattr(net, "kind", None) != "lm":
        raise ConfigError(f"{model}: not a language model (kind {getattr(net, 'kind', '?')!r})")
    tok = resolve_tokenizer(model, tokenizer)
    if tok.vocab_size > net.cfg.padded_vocab:
        raise ConfigError(f"{model}: tokenizer has {tok.vocab_size} ids, the model's embedding only "
                          f"{net.cfg.padded_vocab}")
    if adapters is not None:
        load_adapters(net, adapters)
    return net, tok
