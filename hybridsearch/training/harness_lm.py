"""Our Mamba LMs (with or without saved adapters) as an lm-evaluation-harness model.

This module imports ``lm_eval`` at the top (it subclasses ``TemplateLM``), so nothing imports it but
``harness``, lazily: ``import hybridsearch`` never needs lm-eval. lm-eval finds the class under the name
``hybridsearch`` once ``harness.register()`` has run.

Semantics are lm-eval's own (``models/huggingface.py``), so scores compare with ``--model hf`` ones:

* ``loglikelihood``: context and continuation split as ``TemplateLM._encode_pair`` does (the context's trailing
  whitespace moves to the continuation; the whole string is encoded, then cut); an empty context is the EOS token;
  inputs longer than ``max_length`` lose tokens on the left. Scoring is ``lm_eval.continuation_distributions``,
  the batched pass of our own evaluators, so the numbers equal ``score_candidates``' on the same token pairs.
* ``loglikelihood_rolling``: lm-eval's disjoint rolling windows of ``max_length`` tokens after one EOS.
* ``generate_until``: greedy only, until EOS, ``max_gen_toks`` or a stop string; the context keeps its last
  ``max_length - max_gen_toks`` tokens.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import nn

from ..data.tokenizers import ByteTokenizer, TextTokenizer, load_tokenizer
from ..errors import ConfigError
from .lm_eval import continuation_distributions, greedy_tokens
from .lm_loading import load_lm

log = logging.getLogger(__name__)
MODEL_ARGS = ("pretrained", "adapters", "tokenizer", "device", "batch_size", "max_batch_size", "max_length",
              "max_gen_toks")
_MAX_GEN_ALIASES = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


def _device(device: str | None) -> str:
    # lm-eval's CLI defaults --device to cuda:0; like its hf model, fall back to the CPU where there is no GPU
    if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
        if device is not None:
            log.warning("device %s is not available; using cpu", device)
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(value).strip():
        raise ConfigError(f"model_args {name}={value!r}: expected a positive integer")
    return number


def _built_model_tokenizer(model: nn.Module, tokenizer: Any) -> TextTokenizer:
    if isinstance(tokenizer, TextTokenizer):
        return tokenizer
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if getattr(getattr(model, "cfg", None), "vocab_size", None) == ByteTokenizer.VOCAB_SIZE:
        return ByteTokenizer()
    raise ConfigError("a built model needs tokenizer= (a tokenizer, a tokenizer.json or its folder, or 'byte')")


class HybridSearchLM(TemplateLM):
    """``lm_eval --model hybridsearch --model_args pretrained=NAME_OR_DIR[,adapters=DIR,tokenizer=...]``.

    ``pretrained`` is a registered LM name (``mamba-proxy``, ``mamba-130m``, ...) or a checkpoint directory, or an
    already built model (then ``tokenizer`` is a tokenizer object or a ``load_tokenizer`` argument).
    ``batch_size`` ``auto`` means 16 (no search for the largest batch)."""

    backend = "causal"

    def __init__(self, pretrained: str | os.PathLike[str] | nn.Module = "mamba-proxy",
                 adapters: str | os.PathLike[str] | None = None, tokenizer: Any = None, device: str | None = None,
                 batch_size: int | str = 16, max_length: int | str = 2048, max_gen_toks: int | str = 256,
                 max_batch_size: int | None = None, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ConfigError(f"unknown model_args {', '.join(sorted(unknown))}; allowed: {', '.join(MODEL_ARGS)}")
        del max_batch_size  # lm-eval passes it with --batch_size auto; there is no batch-size search here
        if isinstance(pretrained, nn.Module):
            if adapters is not None:
                raise ConfigError("adapters= needs a model name or checkpoint directory, not a built model")
            here = next(pretrained.parameters()).device
            self._device = here if device is None else torch.device(_device(device))
            self.model, self.tok = pretrained.to(self._device), _built_model_tokenizer(pretrained, tokenizer)
            self.model_name = type(pretrained).__name__
        else:
            self._device = torch.device(_device(device))
            self.model, self.tok = load_lm(pretrained, tokenizer=tokenizer, adapters=adapters, device=self._device)
            self.model_name = str(pretrained)
        self.model.eval()
        self.adapters = str(adapters) if adapters is not None else None
        self.batch_size = 16 if str(batch_size).startswith("auto") else _positive_int("batch_size", batch_size)
        self.max_length = _positive_int("max_length", max_length)
        self.max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)

    # ------------------------------------------------------------------------------------- tokens

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tok.encode(string)  # our tokenizers add no BOS, as HF's GPT-NeoX tokenizer

    def tok_decode(self, tokens: Sequence[int], **kwargs: Any) -> str:
        return self.tok.decode(tokens)

    def get_model_info(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "adapters": self.adapters,
                "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(next(self.model.parameters()).dtype)}

    # ----------------------------------------------------------------------------------- scoring

    def _truncate(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """HFLM's cut: the input (all but the last token) keeps at most ``max_length`` tokens, lost on the left."""
        cont = cont[-self.max_length :]
        whole = (ctx + cont)[-(self.max_length + 1) :]
        return whole[: len(whole) - len(cont)], cont

    def _score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        cut = [self._truncate(c, t) for c, t in pairs]
        for i, lp in continuation_distributions(self.model, cut, self.tok.pad_id, self.batch_size):
            cont = torch.tensor(cut[i][1], device=lp.device)
            # summed in double, token by token, exactly as score_candidates sums
            out[i] = (sum(lp.gather(1, cont[:, None]).squeeze(1).tolist()), bool((lp.argmax(-1) == cont).all()))
        return out

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        for (ctx, cont), _, cont_enc in requests:
            if not cont_enc:
                raise ConfigError(f"an empty continuation cannot be scored (context {ctx[-40:]!r}, continuation "
                                  f"{cont!r})")
        out = self._score([(c, t) for _, c, t in requests])
        for (key, _, _), answer in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", key, answer)
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        windows: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        for r, (string,) in enumerate(req.args for req in requests):
            for w in get_rolling_token_windows(token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                                               max_seq_len=self.max_length, context_len=1):
                windows.append(make_disjoint_window(w))
                owner.append(r)
        totals = [0.0] * len(requests)
        for r, (lp, _) in zip(owner, self._score(windows)):
            totals[r] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -------------------------------------------------------------------------------- generation

    def _gen_options(self, gen_kwargs: dict[str, Any]) -> tuple[list[str], int]:
        kwargs = dict(gen_kwargs)
        if kwargs.get("do_sample"):
            raise ConfigError("the hybridsearch model decodes greedily only; the task asks for do_sample=true")
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        limit = next((kwargs[k] for k in _MAX_GEN_ALIASES if kwargs.get(k) is not None), self.max_gen_toks)
        return [u for u in until if u], _positive_int("max_gen_toks", limit)

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        out: list[str] = [""] * len(requests)
        groups: dict[str, list[int]] = {}  # requests with the same generation options decode together
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        for members in groups.values():
            until, max_new = self._gen_options(requests[members[0]].args[1])
            keep = max(self.max_length - max_new, 1)
            seqs = [(self.tok_encode(requests[i].args[0]) or [self.prefix_token_id])[-keep:] for i in members]

            def stop(new: list[int], until: list[str] = until) -> bool:
                text = self.tok_decode(new)
                return any(u in text for u in until)

            new = greedy_tokens(self.model, seqs, self.tok.eos_id, self.tok.pad_id, max_new, self.batch_size,
                                stop if until else None)
            for i, toks in zip(members, new):
                text = self.tok_decode(toks)
                for u in until:  # cut at every stop string, as lm-eval's postprocess_generated_text
                    text = text.split(u)[0]
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out
