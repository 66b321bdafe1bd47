"""Commonsense evaluation of a Mamba LM: batched likelihood ranking and greedy generation + regex.

Both reuse the evaluators of ``data.commonsense`` (label parsing, ties, regex extraction); this module only
computes the model side in batches:

* likelihood: the summed log-probability of ``"the correct answer is <label>"`` after the Alpaca prompt, for
  every label. Sequences are right-padded (a causal model's real positions never see the pads, so a score does
  not depend on its batch). When a record's candidates differ only in their last token (``answer1``..``answer4``
  with a byte tokenizer) one sequence serves them all: the shared part is scored once, exactly.
* generation: greedy decoding of up to ``max_new_tokens`` tokens, stopping at EOS, batched the same way
  (each step re-runs the batch: the pure-PyTorch model keeps no decoding state).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data import commonsense as cs
from ..data.tokenizers import TextTokenizer
from ..errors import DataError


def _hidden_to_logprobs(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model.lm_head(hidden).float(), dim=-1)


@torch.no_grad()
def continuation_distributions(model: nn.Module, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int,
                               batch_size: int = 16) -> Iterator[tuple[int, torch.Tensor]]:
    """``(index, log-distributions (len(cont), V))`` at each continuation position of each (context,
    continuation) pair, longest batch first: the one batched pass every likelihood scorer here shares (the
    commonsense evaluators and the lm-evaluation-harness model of ``harness_lm``)."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        inputs = [(pairs[i][0] + pairs[i][1])[:-1] for i in idx]  # the last token is never an input
        length = max(len(s) for s in inputs)
        ids = torch.full((len(inputs), length), pad_id, dtype=torch.long)
        for j, s in enumerate(inputs):
            ids[j, : len(s)] = torch.tensor(s)
        hidden = model.forward_hidden(ids.to(device))  # (B, L, D); logits only where they are needed
        for j, i in enumerate(idx):
            ctx, cont = pairs[i]
            pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(cont), device=device)
            yield i, _hidden_to_logprobs(model, hidden[j, pos])


def continuation_logprobs(model: nn.Module, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int,
                          batch_size: int = 16, keep_last: frozenset[int] = frozenset()
                          ) -> tuple[list[list[float]], dict[int, torch.Tensor]]:
    """Per-token log-probabilities of each continuation after its context (token-id lists), and for the pairs
    in ``keep_last`` the whole log-distribution at their last continuation position."""
    out: list[list[float]] = [[] for _ in pairs]
    last: dict[int, torch.Tensor] = {}
    for i, lp in continuation_distributions(model, pairs, pad_id, batch_size):
        cont = torch.tensor(pairs[i][1], device=lp.device)
        out[i] = lp.gather(1, cont[:, None]).squeeze(1).tolist()
        if i in keep_last:
            last[i] = lp[-1].cpu()
    return out, last


def score_candidates(model: nn.Module, tokenizer: TextTokenizer, requests: Sequence[tuple[str, Sequence[str]]],
                     batch_size: int = 16) -> list[list[float]]:
    """Summed log-probability of each candidate continuation of each prompt (context and continuation are
    encoded separately, as lm-evaluation-harness does)."""
    pairs: list[tuple[list[int], list[int]]] = []
    plan: list[tuple[int, list[int] | None]] = []  # (first pair, last tokens when one pair serves all)
    for prompt, conts in requests:
        ctx = tokenizer.encode(prompt) or [tokenizer.eos_id]  # condition an empty prompt on EOS
        toks = [tokenizer.encode(c) for c in conts]
        if any(not t for t in toks):
            raise ValueError(f"an empty continuation cannot be scored: {conts!r}")
        shared = len(toks) > 1 and len({len(t) for t in toks}) == 1 and len({tuple(t[:-1]) for t in toks}) == 1
        plan.append((len(pairs), [t[-1] for t in toks] if shared else None))
        pairs += [(ctx, toks[0])] if shared else [(ctx, t) for t in toks]
    keep = frozenset(p for p, last in plan if last is not None)
    lps, dists = continuation_logprobs(model, pairs, tokenizer.pad_id, batch_size, keep)
    out: list[list[float]] = []
    for (p, last), (_, conts) in zip(plan, requests):
        if last is not None:
            common = sum(lps[p][:-1])
            out.append([common + float(dists[p][t]) for t in last])
        else:
            out.append([sum(lps[p + k]) for k in range(len(conts))])
    return out


def _labels(record: cs.CommonsenseRecord, task: str | None) -> tuple[str, ...]:
    labels = cs.parse_label_set(record.instruction)
    if not labels and task is not None:
        labels = tuple(cs.ANSWER_PATTERNS[cs.canonical_task(task)].split("|"))
    return labels


def evaluate_likelihood(model: nn.Module, tokenizer: TextTokenizer, records: Sequence, task: str | None = None,
                        batch_size: int = 16) -> cs.EvalResult:
    """``data.commonsense.evaluate_likelihood`` with every label scored in batches first."""
    recs = cs.as_records(records)
    requests = []
    for r in recs:
        labels = _labels(r, task)
        requests.append((cs.build_prompt(r.instruction, r.input),
                         [cs.ANSWER_TEMPLATE.format(label=lab) for lab in labels]))
    scores = score_candidates(model, tokenizer, requests, batch_size)
    table = {(p, c): s for (p, conts), ss in zip(requests, scores) for c, s in zip(conts, ss)}
    return cs.evaluate_likelihood(recs, lambda p, c: table[(p, c)], task)


def likelihood_accuracy(model: nn.Module, tokenizer: TextTokenizer, records: Sequence, batch_size: int = 16) -> float:
    """Accuracy over mixed records (labels from each instruction's "Answer format:" line): the search metric."""
    return evaluate_likelihood(model, tokenizer, records, None, batch_size).accuracy


@torch.no_grad()
def greedy_tokens(model: nn.Module, seqs: Sequence[list[int]], eos_id: int, pad_id: int, max_new_tokens: int = 32,
                  batch_size: int = 16, stop: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
    """Greedy continuations of token-id prompts (without EOS), each ending at EOS, after ``max_new_tokens`` or
    once ``stop(new_tokens)`` is true (lm-evaluation-harness's stop sequences)."""
    model.eval()
    device = next(model.parameters()).device
    out: list[list[int]] = [[] for _ in seqs]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        new: list[list[int]] = [[] for _ in idx]
        active = list(range(len(idx)))
        for _ in range(max_new_tokens):
            if not active:
                break
            cur = [seqs[idx[j]] + new[j] for j in active]
            length = max(len(s) for s in cur)
            ids = torch.full((len(cur), length), pad_id, dtype=torch.long)
            for k, s in enumerate(cur):
                ids[k, : len(s)] = torch.tensor(s)
            hidden = model.forward_hidden(ids.to(device))
            last = torch.tensor([len(s) - 1 for s in cur], device=device)
            nxt = model.lm_head(hidden[torch.arange(len(cur), device=device), last]).argmax(-1).tolist()
            still = []
            for j, t in zip(active, nxt):
                if t == eos_id:
                    continue
                new[j].append(int(t))
                if stop is None or not stop(new[j]):
                    still.append(j)
            active = still
        for j, i in enumerate(idx):
            out[i] = new[j]
    return out


def greedy_generate(model: nn.Module, tokenizer: TextTokenizer, prompts: Sequence[str], max_new_tokens: int = 32,
                    batch_size: int = 16) -> list[str]:
    """Greedy continuations (decoded, without the prompt), each stopping at EOS."""
    seqs = [tokenizer.encode(p) or [tokenizer.eos_id] for p in prompts]
    new = greedy_tokens(model, seqs, tokenizer.eos_id, tokenizer.pad_id, max_new_tokens, batch_size)
    return [tokenizer.decode(t) for t in new]


def evaluate_generation(model: nn.Module, tokenizer: TextTokenizer, records: Sequence, task: str,
                        batch_size: int = 16, max_new_tokens: int = 32, ignore_case: bool = False) -> cs.EvalResult:
    """``data.commonsense.evaluate_generation`` with the generations computed in batches first."""
    recs = cs.as_records(records)
    prompts = [cs.build_prompt(r.instruction, r.input) for r in recs]
    gen = dict(zip(prompts, greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size)))
    return cs.evaluate_generation(recs, task, lambda p: gen[p], ignore_case=ignore_case)


@dataclass
class TaskScores:
    evaluator: str
    results: dict[str, cs.EvalResult]

    @property
    def average(self) -> float:
        return sum(r.accuracy for r in self.results.values()) / max(len(self.results), 1)

    def to_dict(self) -> dict:
        return {
            "evaluator": self.evaluator,
            "tasks": {t: {"accuracy": r.accuracy, "correct": r.correct, "total": r.total}
                      for t, r in self.results.items()},
            "average": self.average,
        }


def available_tasks(root: str | os.PathLike[str]) -> list[str]:
    """The LLM-Adapters task folders present under ``root`` (in the canonical order)."""
    found = []
    for t in cs.TASKS:
        try:
            cs.eval_file(root, t)
        except DataError:
            continue
        found.append(t)
    return found


def evaluate_tasks(model: nn.Module, tokenizer: TextTokenizer, root: str | os.PathLike[str] | None = None,
                   tasks: Sequence[str] | None = None, evaluator: str = "likelihood", limit: int | None = None,
                   batch_size: int = 16, max_new_tokens: int = 32) -> TaskScores:
    """Per-task accuracy and the average over ``root/dataset/<task>/test.json`` (default: the bundled proxy)."""
    if evaluator not in ("likelihood", "generation"):
        raise ValueError(f"unknown evaluator {evaluator!r}; allowed: likelihood, generation")
    root = Path(root) if root is not None else cs.BUNDLED_ROOT
    names = [cs.canonical_task(t) for t in tasks] if tasks else available_tasks(root)
    if not names:
        raise DataError(f"{root}: no dataset/<task>/test.json for any of {', '.join(cs.TASKS)}")
    results = {}
    for t in names:
        records = cs.load_test(root, t)[:limit]
        if evaluator == "likelihood":
            results[t] = evaluate_likelihood(model, tokenizer, records, t, batch_size)
        else:
            results[t] = evaluate_generation(model, tokenizer, records, t, batch_size, max_new_tokens)
    return TaskScores(evaluator, results)
