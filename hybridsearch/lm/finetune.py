"""``python -m hybridsearch.lm.finetune``: fine-tune a Mamba LM with a PEFT config on LLM-Adapters records,
save the adapters and (optionally) evaluate them on the test tasks.

    python -m hybridsearch.lm.finetune --model mamba-proxy --peft '{"methods": {"lora_X": {"rank": 8}}}' \\
        --max-steps 40 --out runs/lora_x
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from ..data.commonsense import load_records
from ..errors import HybridSearchError
from ..peft import PeftConfig, apply_peft, count_parameters, save_adapters
from .evaluate import DEFAULT_DATA_ROOT, evaluate_tasks
from .loading import load_lm
from .proxy_tasks import TRAIN_FILE
from .train import LMRecipe, cutoff_for, reference_lr, train_lm


def _peft(text: str | None) -> PeftConfig | None:
    """A YAML file path or an inline JSON / YAML mapping; ``None``: full fine-tuning."""
    if not text:
        return None
    path = Path(text)
    if path.is_file():
        return PeftConfig.from_yaml(path)
    return PeftConfig.from_dict(yaml.safe_load(text), "--peft")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hybridsearch.lm.finetune", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mamba-proxy", help="registered LM name or checkpoint directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (or its folder, or 'byte')")
    p.add_argument("--peft", default=None, help="PEFT config: YAML file or inline mapping (omit: full fine-tuning)")
    p.add_argument("--train", type=Path, default=DEFAULT_DATA_ROOT / TRAIN_FILE, help="LLM-Adapters training JSON")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="test tasks for --eval")
    p.add_argument("--limit-train", type=int, default=None, help="use the first N training records")
    p.add_argument("--recipe", default=None, help="LMRecipe overrides as a JSON mapping")
    p.add_argument("--lr", type=float, default=None, help="default: the reference lr of the method")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="adapter folder to write")
    p.add_argument("--eval", action="store_true", help="evaluate on the test tasks afterwards (likelihood)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except HybridSearchError as e:
        print(f"finetune: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import torch

    torch.manual_seed(args.seed)
    config = _peft(args.peft)
    model, tok = load_lm(args.model, tokenizer=args.tokenizer)
    if config is not None:
        apply_peft(model, config)
    recipe = LMRecipe.from_dict(json.loads(args.recipe) if args.recipe else None)
    recipe.lr = args.lr if args.lr is not None else reference_lr(config)
    if args.max_steps is not None:
        recipe.max_steps = args.max_steps
    train = load_records(args.train)[: args.limit_train]

    def progress(step: int, total: int, loss: float) -> None:
        print(f"step {step}/{total}: loss {loss:.4f}", flush=True)

    res = train_lm(model, tok, train, recipe, seed=args.seed, progress=progress)
    info = {"model": str(args.model), "peft": config.to_dict() if config else None, "recipe": recipe.to_dict(),
            "cutoff_len": cutoff_for(tok, recipe), "truncated": res.truncated, "train_records": len(train),
            "steps": res.steps, "seconds": res.seconds, "tokens": res.tokens,
            "first_loss": res.losses[0] if res.losses else None, "last_loss": res.losses[-1] if res.losses else None,
            "counts": count_parameters(model)}
    if config is not None:
        save_adapters(model, args.out, extra_meta={"finetune": info})
    else:
        from ..models.checkpoint import save_mamba

        save_mamba(model, args.out)
    if args.eval:
        t0 = time.perf_counter()
        info["eval"] = evaluate_tasks(model, tok, args.data_root).to_dict()
        info["eval"]["seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finetune.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "recipe"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
