"""``hybridsearch finetune``: fine-tune a Mamba LM (+ a PEFT config) on LLM-Adapters records with the reference
recipe, save the adapters (or the full checkpoint) and optionally evaluate on the test tasks.

    hybridsearch finetune --model mamba-proxy --peft '{"methods": {"lora_X": {"rank": 8}}}' \\
        --max-steps 40 --out runs/lora_x --eval
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..data.commonsense import BUNDLED_ROOT, TRAIN_FILE
from ..errors import ConfigError

NAME = "finetune"
HELP = ("fine-tune a Mamba LM with a PEFT config (omit --peft: full fine-tuning) on LLM-Adapters records, save "
        "the adapters, optionally --eval on the test tasks")



def _peft(text: str | None):
    """A YAML file path or an inline JSON / YAML mapping; ``None``: full fine-tuning."""
    from ..peft import PeftConfig
    from ..safeio import parse_yaml

    if not text:
        return None
    path = Path(text)
    if path.is_file():
        return PeftConfig.from_yaml(path)
    data = parse_yaml(text, "--peft (neither a file nor a YAML / JSON mapping)")
    if not isinstance(data, dict):
        raise ConfigError(f"--peft: {text!r} is neither an existing file nor a mapping")
    return PeftConfig.from_dict(data, "--peft")


def _recipe(text: str | None):
    """``LMRecipe`` overrides from a JSON mapping; unknown keys are an error, not silently ignored."""
    from ..training.lm import LMRecipe

    try:
        data = json.loads(text) if text else {}
    except (ValueError, RecursionError) as e:  # JSONDecodeError, an integer too long, nesting too deep
        raise ConfigError(f"--recipe: not JSON ({' '.join(str(e).split()) or 'nested too deeply'})") from None
    if not isinstance(data, dict):
        raise ConfigError("--recipe: expected a JSON mapping, e.g. '{\"batch_size\": 32}'")
    unknown = sorted(set(data) - set(LMRecipe.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"--recipe: unknown key(s) {', '.join(unknown)}; allowed: "
                          f"{', '.join(LMRecipe.__dataclass_fields__)}")
    return LMRecipe.from_dict(data)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mamba-proxy", help="registered LM name or checkpoint directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (or its folder, or 'byte')")
    p.add_argument("--peft", default=None, help="PEFT config: YAML file or inline mapping (omit: full fine-tuning)")
    p.add_argument("--train", type=Path, default=BUNDLED_ROOT / TRAIN_FILE, help="LLM-Adapters training JSON")
    p.add_argument("--data-root", type=Path, default=BUNDLED_ROOT, help="test tasks for --eval")
    p.add_argument("--limit-train", type=int, default=None, help="use the first N training records")
    p.add_argument("--recipe", default=None, help="LMRecipe overrides as a JSON mapping")
    p.add_argument("--lr", type=float, default=None, help="default: the reference lr of the method")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="adapter folder to write (full fine-tuning: a checkpoint)")
    p.add_argument("--eval", action="store_true", help="evaluate on the test tasks afterwards")
    p.add_argument("--evaluator", choices=["likelihood", "generation"], default="likelihood", help="for --eval")
    p.add_argument("--eval-limit", type=int, default=None, help="--eval: first N records of each task")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data.commonsense import load_records
    from ..peft import apply_peft, count_parameters, save_adapters
    from ..training.lm import cutoff_for, reference_lr, train_lm
    from ..training.lm_eval import evaluate_tasks
    from ..training.lm_loading import load_lm

    if args.limit_train is not None and args.limit_train < 1:
        raise ConfigError(f"--limit-train must be positive, got {args.limit_train}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ConfigError(f"--max-steps must be positive, got {args.max_steps}")
    torch.manual_seed(args.seed)
    config = _peft(args.peft)
    recipe = _recipe(args.recipe)
    train = load_records(args.train)[: args.limit_train]
    model, tok = load_lm(args.model, tokenizer=args.tokenizer)
    if config is not None:
        apply_peft(model, config)
    recipe.lr = args.lr if args.lr is not None else reference_lr(config)
    if args.max_steps is not None:
        recipe.max_steps = args.max_steps

    start = time.perf_counter()

    def progress(step: int, total: int, loss: float) -> None:  # ~25 lines a run, not one per step
        if step in (1, total) or step % max(1, total // 25) == 0:
            print(f"step {step}/{total}: loss {loss:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)

    res = train_lm(model, tok, train, recipe, seed=args.seed, progress=progress)
    info = {"model": str(args.model), "peft": config.to_dict() if config else None, "recipe": recipe.to_dict(),
            "cutoff_len": cutoff_for(tok, recipe), "truncated": res.truncated, "train_records": len(train),
            "steps": res.steps, "seconds": res.seconds, "tokens": res.tokens,
            "tokens_per_second": res.tokens / res.seconds if res.seconds else None,
            "first_loss": res.losses[0] if res.losses else None, "last_loss": res.losses[-1] if res.losses else None,
            "counts": count_parameters(model)}
    if config is not None:
        save_adapters(model, args.out, extra_meta={"finetune": info})
    else:
        from ..models.checkpoint import save_mamba

        save_mamba(model, args.out)
    if args.eval:
        t0 = time.perf_counter()
        info["eval"] = evaluate_tasks(model, tok, args.data_root, evaluator=args.evaluator,
                                      limit=args.eval_limit).to_dict()
        info["eval"]["seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finetune.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "recipe"}, indent=2), flush=True)
    return 0

