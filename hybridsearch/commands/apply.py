"""``hybridsearch apply --base CKPT --adapters DIR [--merge] --out PATH [--hf-peft DIR]``: deploy saved adapters."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "apply"
HELP = ("put saved adapters on a base checkpoint and write the result in the base's format (--merge: one plain "
        "checkpoint); --hf-peft: the LoRA family in Hugging Face PEFT format")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True,
                   help="base model: registered name, hustvl .pth, or mamba_ssm / HF checkpoint directory")
    p.add_argument("--adapters", type=Path, required=True,
                   help="adapters folder (save_adapters, or OUT/adapters/TASK of export --retrain)")
    p.add_argument("--merge", action="store_true",
                   help="fold the adapters into the base weights: --out is then a plain checkpoint of the base's "
                        "format that create_model loads (refused, by name, for methods that cannot be folded)")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write: with --merge a .pth file (Vim) or a directory (LM); without, a bundle "
                        "directory (base checkpoint + adapters) that hybridsearch.deploy.load_model reads")
    p.add_argument("--hf-peft", type=Path, default=None, metavar="DIR",
                   help="also write adapter_config.json + adapter_model.safetensors for Hugging Face PEFT")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from ..deploy import apply_adapters, export_hf_peft, write_model
    from ..errors import ConfigError
    from ..peft import merge_peft, unmergeable

    if args.out is None and args.hf_peft is None:
        raise ConfigError("nothing to write: pass --out PATH and/or --hf-peft DIR")
    model = apply_adapters(args.base, args.adapters)
    blocked = unmergeable(model) if args.merge else []
    if blocked:  # refused before anything is written
        raise ConfigError(f"--merge: {', '.join(blocked)} cannot be folded into the base weights exactly; "
                          "apply without --merge (a bundle: base checkpoint + adapters)")
    summary: dict = {"base": str(args.base), "adapters": str(args.adapters), "merged": args.merge,
                     "format": model.base_format}
    if args.hf_peft is not None:
        hf = export_hf_peft(model, args.hf_peft, base_name=str(args.base))
        summary["hf_peft"] = {"dir": str(args.hf_peft), "targets": len(hf["config"]["target_modules"]),
                              "left_out": hf["left_out"]}
    if args.out is not None:
        if args.merge:
            merge_peft(model, strict=True)
        summary["out"] = str(write_model(model, args.out))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    if "out" in summary:
        kind = "plain checkpoint" if args.merge else "bundle (base + adapters)"
        print(f"wrote {summary['out']}: {kind}, {model.base_format} format")
    if "hf_peft" in summary:
        left = summary["hf_peft"]["left_out"]
        print(f"wrote {args.hf_peft}: Hugging Face PEFT LoRA, {summary['hf_peft']['targets']} target modules"
              + (f"; left out: {', '.join(sorted(left))} (see its README.md)" if left else ""))
    return 0
