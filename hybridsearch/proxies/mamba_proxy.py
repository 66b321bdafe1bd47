"""``mamba-proxy`` and ``mamba2-proxy``: byte-level 4-layer Mamba-1 and Mamba-2 LMs pretrained on WordNet glosses and
examples, the same way (one recipe, one corpus, one loop; only the registered architecture differs).

Corpus: one line per synset, ``lemma, lemma: definition; "example"`` (WordNet's own gloss layout), UTF-8 bytes
plus EOS, synsets in a seeded order. The first ``heldout_synsets`` of that order are never trained on: the
held-out loss is measured on them. Training samples ``seq_len + 1`` byte windows at random offsets, AdamW with
linear warm-up and cosine decay, then saves a mamba_ssm checkpoint directory (+ the WordNet NOTICE).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.tokenizers import ByteTokenizer
from ..errors import TrialFailure
from ..models import ASSETS, MODELS, build
from ..models.checkpoint import save_mamba
from .wordnet import LICENSE_NOTICE, read_wordnet, synset_text

LM_PROXIES = ("mamba-proxy", "mamba2-proxy")  # the byte-level LMs this module pretrains (registered names)
BUNDLED = "bundled"  # ``out``: the proxy's own bundled asset folder (ASSETS / name)


@dataclass
class PretrainRecipe:
    # 1200 x 8 x 256 bytes (2.5 M, ~10 min on one shared CPU thread): 2.16 bits/byte held out, against 2.33
    # for the first recipe (600 x 16 x 128); longer windows than the 128 bytes of most glosses
    steps: int = 1200
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 40
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    heldout_synsets: int = 1000
    heldout_windows: int = 32
    seed: int = 0


def corpus(synsets, seed: int, heldout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train stream, held-out stream) of byte ids (int16: 11 M bytes), synsets shuffled by ``seed``."""
    tok = ByteTokenizer()
    order = list(range(len(synsets)))
    random.Random(seed).shuffle(order)

    def stream(idx: list[int]) -> torch.Tensor:
        ids: list[int] = []
        for i in idx:
            ids += tok.encode(synset_text(synsets[i]), add_eos=True)
        return torch.tensor(ids, dtype=torch.int16)

    return stream(order[heldout:]), stream(order[:heldout])


@torch.no_grad()
def stream_loss(model: torch.nn.Module, stream: torch.Tensor, seq_len: int, windows: int, batch: int = 16) -> float:
    """Mean next-byte cross-entropy (nats) over the first ``windows`` disjoint windows of ``stream``."""
    model.eval()
    n = min(windows, (len(stream) - 1) // (seq_len + 1))
    x = stream[: n * (seq_len + 1)].view(n, seq_len + 1).long()
    total = 0.0
    for i in range(0, n, batch):
        xb = x[i : i + batch]
        logits = model(xb[:, :-1]).float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1), reduction="sum").item()
    return total / (n * seq_len)


def _lr(step: int, r: PretrainRecipe) -> float:
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    t = (step - r.warmup_steps) / max(r.steps - r.warmup_steps, 1)
    return r.min_lr + (r.lr - r.min_lr) * 0.5 * (1 + math.cos(math.pi * t))


def pretrain_mamba_proxy(wordnet: str | Path | None = None, out: str | Path | None = BUNDLED,
                         recipe: PretrainRecipe | None = None, log: Callable[[str], None] = print,
                         name: str = "mamba-proxy") -> dict:
    """Train the proxy ``name`` (``LM_PROXIES``) from scratch; save ``config.json`` + ``pytorch_model.bin`` (the
    mamba_ssm layout) to ``out``: a folder, ``BUNDLED`` (the proxy's own asset, never another proxy's) or None
    (not saved)."""
    if name not in LM_PROXIES:
        raise ValueError(f"unknown LM proxy {name!r}; allowed: {', '.join(LM_PROXIES)}")
    if isinstance(out, str) and out == BUNDLED:
        out = ASSETS / name
    arch = MODELS.get(name).config  # one definition: the registry's
    r = recipe or PretrainRecipe()
    torch.manual_seed(r.seed)
    train, heldout = corpus(read_wordnet(wordnet), r.seed, r.heldout_synsets)
    model = build(arch)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.endswith("A_log")]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and not n.endswith("A_log"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=r.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(r.seed)
    start, running = time.perf_counter(), None
    for step in range(r.steps):
        model.train()
        offs = torch.randint(0, len(train) - r.seq_len - 1, (r.batch_size,), generator=gen)
        xb = torch.stack([train[o : o + r.seq_len + 1] for o in offs.tolist()]).long()
        for g in opt.param_groups:
            g["lr"] = _lr(step, r)
        logits = model(xb[:, :-1]).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1))
        if not torch.isfinite(loss):
            raise TrialFailure(f"non-finite pretraining loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % 50 == 0 or step + 1 == r.steps:
            log(f"step {step + 1}/{r.steps}: train loss {running:.3f} ({time.perf_counter() - start:.0f} s)")
    held = stream_loss(model, heldout, r.seq_len, r.heldout_windows)
    info = {
        "model": name, "architecture": arch.to_dict(), "tokenizer": "byte (ByteTokenizer, 258 ids)",
        "params": sum(p.numel() for p in model.parameters()),
        "corpus": "WordNet 3.0 glosses and examples (Debian wordnet-base), one line per synset",
        "train_bytes": len(train), "seen_bytes": r.steps * r.batch_size * r.seq_len,
        "heldout_synsets": r.heldout_synsets, "heldout_bytes": len(heldout), "heldout_loss_nats_per_byte": held,
        "heldout_bits_per_byte": held / math.log(2), "heldout_perplexity": math.exp(held),
        "final_train_loss": running, "seconds": time.perf_counter() - start, "recipe": asdict(r),
    }
    if out is not None:
        save_mamba(model, out, fmt="mamba_ssm")
        (Path(out) / "NOTICE").write_text("These weights were trained on WordNet 3.0 glosses and examples (Debian "
                                          "wordnet-base).\n\n" + LICENSE_NOTICE)
    return info
